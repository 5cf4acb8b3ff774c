//! Pulls OCI images from registries, stores their blobs by digest, and unpacks
//! each image once into a read-only filesystem image that pod VMs attach as a
//! block device.
