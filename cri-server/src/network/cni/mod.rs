//! CNI: network configuration, plugin invocation and results.
