use super::*;

const BRIDGE_LIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "hull-net",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}, "someFutureKey": [1, 2]},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn load_err(dir: &Path) -> (String, String, String) {
    match NetworkConfigList::load(dir) {
        Err(CniError::ConfigInvalid { file, key, reason }) => {
            (file.display().to_string(), key, reason)
        }
        other => panic!("expected ConfigInvalid, got {other:?}"),
    }
}

#[test]
fn a_missing_directory_has_no_network() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(
        NetworkConfigList::load(&tmp.path().join("absent")).unwrap(),
        None
    );
}

#[test]
fn a_directory_without_config_files_has_no_network() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "README", "not a config");
    write(tmp.path(), "10-net.conflist.bak", BRIDGE_LIST);
    fs::create_dir(tmp.path().join("00-dir.conf")).unwrap();
    assert_eq!(NetworkConfigList::load(tmp.path()).unwrap(), None);
}

#[test]
fn a_list_is_loaded_with_unknown_keys_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "10-hull.conflist", BRIDGE_LIST);
    let list = NetworkConfigList::load(tmp.path()).unwrap().unwrap();
    assert_eq!(list.name, "hull-net");
    assert_eq!(list.cni_version, "1.0.0");
    assert!(!list.disable_check);
    assert!(list.check_enabled());
    assert_eq!(list.source, file);
    let types: Vec<_> = list.plugins.iter().map(PluginConfig::plugin_type).collect();
    assert_eq!(types, ["bridge", "portmap"]);
    assert_eq!(
        list.plugins[0].config()["someFutureKey"],
        serde_json::json!([1, 2])
    );
    assert!(list.plugins[1].has_capability("portMappings"));
    assert!(!list.plugins[0].has_capability("portMappings"));
    assert!(!list.plugins[1].has_capability("bandwidth"));
}

#[test]
fn the_lexically_first_config_file_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let other = BRIDGE_LIST.replace("hull-net", "later");
    write(tmp.path(), "20-b.conflist", &other);
    write(tmp.path(), "99-c.json", &other);
    let first = write(
        tmp.path(),
        "10-a.conf",
        r#"{"cniVersion":"0.4.0","name":"first","type":"ptp"}"#,
    );
    // Not a config file, though it sorts first.
    write(tmp.path(), "00-notes.txt", "ignored");
    assert_eq!(
        NetworkConfigList::first_config_file(tmp.path()).unwrap(),
        Some(first)
    );
    assert_eq!(
        NetworkConfigList::load(tmp.path()).unwrap().unwrap().name,
        "first"
    );
}

#[test]
fn a_single_plugin_config_is_a_list_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "10-single.json",
        r#"{"cniVersion":"0.3.1","name":"single","type":"bridge","isGateway":true}"#,
    );
    let list = NetworkConfigList::load(tmp.path()).unwrap().unwrap();
    assert_eq!(list.name, "single");
    assert_eq!(list.cni_version, "0.3.1");
    assert_eq!(list.plugins.len(), 1);
    assert_eq!(list.plugins[0].plugin_type(), "bridge");
    assert_eq!(list.plugins[0].config()["isGateway"], true);
    assert!(!list.check_enabled(), "0.3.1 has no CHECK");
}

#[test]
fn disable_check_turns_check_off() {
    let tmp = tempfile::tempdir().unwrap();
    let text = BRIDGE_LIST.replace("\"plugins\"", "\"disableCheck\": true, \"plugins\"");
    write(tmp.path(), "10.conflist", &text);
    let list = NetworkConfigList::load(tmp.path()).unwrap().unwrap();
    assert!(list.disable_check);
    assert!(!list.check_enabled());
}

#[test]
fn a_bad_first_file_is_an_error_naming_the_file_and_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("10.conflist", "{not json", "(file)", "not valid JSON"),
        ("10.conflist", "[]", "(file)", "not a JSON object"),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
            "name",
            "missing",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","name":"-x","plugins":[{"type":"x"}]}"#,
            "name",
            "must start",
        ),
        (
            "10.conflist",
            r#"{"name":"n","plugins":[{"type":"x"}]}"#,
            "cniVersion",
            "missing",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#,
            "cniVersion",
            "not supported",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":1,"name":"n","plugins":[{"type":"x"}]}"#,
            "cniVersion",
            "not a string",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
            "plugins",
            "missing",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            "plugins",
            "empty",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"},{"mtu":1}]}"#,
            "plugins[1].type",
            "missing",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
            "plugins[0].type",
            "plain file name",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[7]}"#,
            "plugins[0]",
            "not an object",
        ),
        (
            "10.conflist",
            r#"{"cniVersion":"1.0.0","name":"n","disableCheck":3,"plugins":[{"type":"x"}]}"#,
            "disableCheck",
            "not a boolean",
        ),
        (
            "10.conf",
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]}"#,
            "type",
            ".conflist",
        ),
        (
            "10.conf",
            r#"{"cniVersion":"1.0.0","name":"n","type":""}"#,
            "type",
            "empty",
        ),
    ];
    for (name, text, want_key, want_reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let file = write(tmp.path(), name, text);
        let (got_file, key, reason) = load_err(tmp.path());
        assert_eq!(got_file, file.display().to_string(), "{text}");
        assert_eq!(&key, want_key, "{text}: {reason}");
        assert!(
            reason.contains(want_reason),
            "{text}: {reason:?} should mention {want_reason:?}"
        );
        let message = NetworkConfigList::load(tmp.path()).unwrap_err().to_string();
        assert!(
            message.contains(&file.display().to_string()) && message.contains(want_key),
            "{message}"
        );
    }
}

#[test]
fn every_supported_version_loads() {
    for version in SUPPORTED_VERSIONS {
        let text = BRIDGE_LIST.replace("1.0.0", version);
        let list =
            NetworkConfigList::parse(text.as_bytes(), true, Path::new("x.conflist")).unwrap();
        assert_eq!(list.cni_version, *version);
        assert_eq!(list.check_enabled(), !version.starts_with("0.3."));
    }
}

#[test]
fn an_unreadable_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "plain", "");
    // A file where a directory should be.
    let err = NetworkConfigList::load(&file).unwrap_err();
    assert!(matches!(err, CniError::ConfigDir { .. }), "{err:?}");
    assert!(err.to_string().contains("plain"), "{err}");
}
