//! Network configuration: the first `.conflist`, `.conf` or `.json` file of
//! a directory, validated, as a [`NetworkConfigList`].
//!
//! A `.conflist` is a network list (`cniVersion`, `name`, `plugins`, and
//! optionally `disableCheck`); a `.conf` or `.json` file is a single plugin
//! configuration, taken as a list of one. Each plugin's configuration is kept
//! as JSON, so keys hull does not know reach the plugin unchanged.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::CniError;

/// Where CNI network configurations are looked for unless configured
/// otherwise.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// The CNI specification versions hull can run configurations of.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Versions before CHECK existed (it came with 0.4.0).
const VERSIONS_WITHOUT_CHECK: &[&str] = &["0.3.0", "0.3.1"];

/// File extensions of configuration files, without the dot.
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// A network: an ordered list of plugins run for every pod, loaded from a
/// configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network's name, passed to every plugin as `name`.
    pub name: String,
    /// The specification version of the configuration, passed to every
    /// plugin as `cniVersion`.
    pub cni_version: String,
    /// `disableCheck`: CHECK is not run for this network.
    pub disable_check: bool,
    /// The plugins, in the order ADD runs them. Never empty.
    pub plugins: Vec<PluginConfig>,
    /// The file the configuration came from.
    pub source: PathBuf,
}

/// One plugin of a network: its configuration object as written in the
/// file.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    plugin_type: String,
    config: Map<String, Value>,
}

impl PluginConfig {
    /// The plugin's `type`: the name of its executable.
    pub fn plugin_type(&self) -> &str {
        &self.plugin_type
    }

    /// The plugin's configuration as written in the file.
    pub fn config(&self) -> &Map<String, Value> {
        &self.config
    }

    /// Whether the plugin declares `name` as `true` in its `capabilities`,
    /// i.e. wants the runtime's value for it in `runtimeConfig`.
    pub fn has_capability(&self, name: &str) -> bool {
        self.config
            .get("capabilities")
            .and_then(|caps| caps.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

impl NetworkConfigList {
    /// Loads the network of `conf_dir`: its first configuration file in
    /// lexical order of file names.
    ///
    /// `Ok(None)` when the directory does not exist or holds no
    /// configuration file (the node's network is not ready yet). A first
    /// file that cannot be read or is invalid is an error naming it; later
    /// files are not looked at.
    pub fn load(conf_dir: &Path) -> Result<Option<Self>, CniError> {
        match Self::first_config_file(conf_dir)? {
            Some(file) => Self::from_file(&file).map(Some),
            None => Ok(None),
        }
    }

    /// The file [`load`](Self::load) would take: the lexically first file
    /// of `conf_dir` (not a directory) ending in `.conflist`, `.conf` or
    /// `.json`.
    pub fn first_config_file(conf_dir: &Path) -> Result<Option<PathBuf>, CniError> {
        let dir_error = |source| CniError::ConfigDir {
            dir: conf_dir.to_owned(),
            source,
        };
        let entries = match fs::read_dir(conf_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(dir_error(e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(dir_error)?.path();
            let is_config = path
                .extension()
                .and_then(OsStr::to_str)
                .is_some_and(|ext| CONFIG_EXTENSIONS.contains(&ext));
            // A symlink to a directory is a directory; a broken symlink is
            // kept, and reading it reports the problem.
            if is_config && !path.is_dir() {
                files.push(path);
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        Ok(files.into_iter().next())
    }

    /// Reads and validates one configuration file: a network list when it
    /// ends in `.conflist`, a single plugin configuration otherwise.
    pub fn from_file(file: &Path) -> Result<Self, CniError> {
        let bytes = fs::read(file).map_err(|source| CniError::ConfigRead {
            file: file.to_owned(),
            source,
        })?;
        let is_list = file.extension() == Some(OsStr::new("conflist"));
        Self::parse(&bytes, is_list, file)
    }

    /// Validates a configuration: a network list (`is_list`) or a single
    /// plugin configuration. `file` is named in errors and kept as
    /// [`source`](Self::source).
    pub fn parse(bytes: &[u8], is_list: bool, file: &Path) -> Result<Self, CniError> {
        let invalid = |key: &str, reason: String| CniError::ConfigInvalid {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| invalid("(file)", format!("not valid JSON: {e}")))?;
        let Value::Object(top) = value else {
            return Err(invalid("(file)", "not a JSON object".to_owned()));
        };

        let name = required_string(&top, "name").map_err(|r| invalid("name", r))?;
        if let Err(reason) = validate_network_name(&name) {
            return Err(invalid("name", reason.to_owned()));
        }
        let cni_version =
            required_string(&top, "cniVersion").map_err(|r| invalid("cniVersion", r))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(invalid(
                "cniVersion",
                format!(
                    "version {cni_version:?} is not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }

        let (disable_check, plugins) = if is_list {
            let disable_check = parse_disable_check(top.get("disableCheck"))
                .map_err(|r| invalid("disableCheck", r))?;
            let plugins = match top.get("plugins") {
                None => return Err(invalid("plugins", "missing".to_owned())),
                Some(Value::Array(plugins)) if plugins.is_empty() => {
                    return Err(invalid(
                        "plugins",
                        "empty: a network needs a plugin".to_owned(),
                    ));
                }
                Some(Value::Array(plugins)) => plugins,
                Some(_) => return Err(invalid("plugins", "not an array".to_owned())),
            };
            let mut parsed = Vec::with_capacity(plugins.len());
            for (i, plugin) in plugins.iter().enumerate() {
                let Value::Object(config) = plugin else {
                    return Err(invalid(
                        &format!("plugins[{i}]"),
                        "not an object".to_owned(),
                    ));
                };
                let plugin = PluginConfig::new(config.clone())
                    .map_err(|r| invalid(&format!("plugins[{i}].type"), r))?;
                parsed.push(plugin);
            }
            (disable_check, parsed)
        } else {
            let plugin = PluginConfig::new(top).map_err(|mut reason| {
                reason.push_str(" (a network list with \"plugins\" must be in a .conflist file)");
                invalid("type", reason)
            })?;
            (false, vec![plugin])
        };

        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins,
            source: file.to_owned(),
        })
    }

    /// Whether CHECK is run for this network: its version has CHECK
    /// (0.4.0 and later) and `disableCheck` is not set.
    pub fn check_enabled(&self) -> bool {
        !self.disable_check && !VERSIONS_WITHOUT_CHECK.contains(&self.cni_version.as_str())
    }
}

impl PluginConfig {
    /// Takes a plugin configuration object, checking its `type`. The error
    /// is the reason `type` is wrong.
    fn new(config: Map<String, Value>) -> Result<Self, String> {
        let plugin_type = required_string(&config, "type")?;
        validate_plugin_type(&plugin_type)?;
        Ok(PluginConfig {
            plugin_type,
            config,
        })
    }
}

/// The non-empty string at `key`, or why there is none.
fn required_string(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    match object.get(key) {
        None | Some(Value::Null) => Err("missing".to_owned()),
        Some(Value::String(s)) if s.is_empty() => Err("empty".to_owned()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("not a string: {other}")),
    }
}

/// `disableCheck` is a boolean; some generators write it as the string
/// `"true"` or `"false"`, which is accepted too.
fn parse_disable_check(value: Option<&Value>) -> Result<bool, String> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(format!("not a boolean: {other}")),
    }
}

/// The specification's network name rule: an ASCII letter or digit, then
/// letters, digits, `_`, `.` or `-`.
fn validate_network_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok {
        return Err("must start with an ASCII letter or digit");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err("may only hold ASCII letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// A plugin type names an executable in a plugin directory: a plain file
/// name, never a path.
fn validate_plugin_type(plugin_type: &str) -> Result<(), String> {
    if plugin_type == "." || plugin_type == ".." || plugin_type.contains(['/', '\0']) {
        return Err(format!(
            "{plugin_type:?} is not a plain file name (a plugin is looked up by name in the plugin directories)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
