//! Invocation tests with fake plugins: shell scripts that record their
//! environment and stdin and print a canned result or error.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::*;

const NETNS: &str = "/run/netns/test-pod";

/// A bin dir of fake plugins and the directory they record into.
struct Fakes {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    log: PathBuf,
}

impl Fakes {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let log = tmp.path().join("log");
        fs::create_dir(&bin).unwrap();
        fs::create_dir(&log).unwrap();
        Fakes {
            _tmp: tmp,
            bin,
            log,
        }
    }

    /// Writes plugin `name`: it records its input, then runs `behavior`.
    fn plugin(&self, name: &str, behavior: &str) {
        let log = self.log.display();
        let script = format!(
            "#!/bin/sh\n\
             cat > '{log}/{name}.'\"$CNI_COMMAND\"'.stdin'\n\
             env > '{log}/{name}.'\"$CNI_COMMAND\"'.env'\n\
             echo \"{name} $CNI_COMMAND\" >> '{log}/order'\n\
             {behavior}\n"
        );
        let path = self.bin.join(name);
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A plugin that prints [`canned_result`] on ADD and nothing otherwise.
    fn ok_plugin(&self, name: &str) {
        self.plugin(name, &prints_on_add(&canned_result(name)));
    }

    fn cni(&self) -> Cni {
        Cni {
            bin_dirs: vec![self.bin.clone(), PathBuf::from("/nonexistent/hull-cni-bin")],
            timeout: Duration::from_secs(20),
        }
    }

    /// The plugins that ran, as `"name COMMAND"`, in order.
    fn order(&self) -> Vec<String> {
        fs::read_to_string(self.log.join("order"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn stdin(&self, name: &str, command: &str) -> Value {
        let text = fs::read_to_string(self.log.join(format!("{name}.{command}.stdin"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn env(&self, name: &str, command: &str) -> HashMap<String, String> {
        fs::read_to_string(self.log.join(format!("{name}.{command}.env")))
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// A shell snippet printing `result` on ADD.
fn prints_on_add(result: &Value) -> String {
    format!("if [ \"$CNI_COMMAND\" = ADD ]; then cat <<'EOF'\n{result}\nEOF\nfi")
}

/// A valid 1.0.0 result whose sandbox interface is named after the plugin.
fn canned_result(name: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "02:00:00:00:00:01"},
            {"name": name, "mac": "02:00:00:00:00:02", "sandbox": NETNS}
        ],
        "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}]
    })
}

fn list(plugins: Value) -> NetworkConfigList {
    list_with(json!({"cniVersion": "1.0.0", "name": "testnet", "plugins": plugins}))
}

fn list_with(config: Value) -> NetworkConfigList {
    NetworkConfigList::parse(
        config.to_string().as_bytes(),
        true,
        Path::new("/etc/cni/net.d/10-test.conflist"),
    )
    .unwrap()
}

fn attachment() -> Attachment {
    Attachment {
        container_id: "0123abcd".to_owned(),
        netns: PathBuf::from(NETNS),
        ifname: "eth0".to_owned(),
        pod_namespace: "default".to_owned(),
        pod_name: "web-1".to_owned(),
        pod_uid: "b5a9f2c4-1111-2222-3333-444455556666".to_owned(),
        port_mappings: vec![],
    }
}

#[tokio::test]
async fn add_passes_the_environment_and_config_the_spec_defines() {
    let fakes = Fakes::new();
    fakes.ok_plugin("alpha");
    let list = list(json!([{"type": "alpha", "futureKey": {"x": 1}, "prevResult": "stale"}]));
    let result = fakes.cni().add(&list, &attachment()).await.unwrap();
    assert_eq!(result.raw(), &canned_result("alpha"));

    let env = fakes.env("alpha", "ADD");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "0123abcd");
    assert_eq!(env["CNI_NETNS"], NETNS);
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=0123abcd;\
         K8S_POD_UID=b5a9f2c4-1111-2222-3333-444455556666;IgnoreUnknown=1"
    );
    assert_eq!(
        env["CNI_PATH"],
        format!("{}:/nonexistent/hull-cni-bin", fakes.bin.display())
    );
    assert!(
        !env.get("PATH").is_none_or(String::is_empty),
        "plugins need a PATH"
    );

    let stdin = fakes.stdin("alpha", "ADD");
    assert_eq!(stdin["name"], "testnet");
    assert_eq!(stdin["cniVersion"], "1.0.0");
    assert_eq!(stdin["type"], "alpha");
    assert_eq!(stdin["futureKey"], json!({"x": 1}));
    // The first plugin of an ADD has no previous result, whatever the file says.
    assert!(stdin.get("prevResult").is_none(), "{stdin}");
    // No capability declared, so no runtimeConfig.
    assert!(stdin.get("runtimeConfig").is_none(), "{stdin}");
}

#[tokio::test]
async fn add_chains_each_result_into_the_next_plugin() {
    let fakes = Fakes::new();
    for name in ["one", "two", "three"] {
        fakes.ok_plugin(name);
    }
    let list = list(json!([{"type": "one"}, {"type": "two"}, {"type": "three"}]));
    let result = fakes.cni().add(&list, &attachment()).await.unwrap();
    assert_eq!(fakes.order(), ["one ADD", "two ADD", "three ADD"]);
    assert_eq!(
        fakes.stdin("two", "ADD")["prevResult"],
        canned_result("one")
    );
    assert_eq!(
        fakes.stdin("three", "ADD")["prevResult"],
        canned_result("two")
    );
    assert_eq!(result.raw(), &canned_result("three"));
    assert_eq!(
        result
            .sandbox_interface("three")
            .unwrap()
            .mac
            .unwrap()
            .to_string(),
        "02:00:00:00:00:02"
    );
}

#[tokio::test]
async fn runtime_config_carries_only_declared_capabilities() {
    let fakes = Fakes::new();
    for name in ["plain", "ports", "ports-off", "shaper", "merged"] {
        fakes.ok_plugin(name);
    }
    let list = list(json!([
        {"type": "plain"},
        {"type": "ports", "capabilities": {"portMappings": true}},
        {"type": "ports-off", "capabilities": {"portMappings": false}},
        {"type": "shaper", "capabilities": {"bandwidth": true}},
        {"type": "merged", "capabilities": {"portMappings": true}, "runtimeConfig": {"mine": 1, "portMappings": "old"}}
    ]));
    let mut att = attachment();
    att.port_mappings = vec![
        PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        },
        PortMapping {
            host_port: 5353,
            container_port: 53,
            protocol: Protocol::Udp,
            host_ip: Some("127.0.0.1".parse().unwrap()),
        },
        PortMapping {
            host_port: 9999,
            container_port: 9,
            protocol: Protocol::Sctp,
            host_ip: None,
        },
    ];
    fakes.cni().add(&list, &att).await.unwrap();
    let mappings = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        {"hostPort": 9999, "containerPort": 9, "protocol": "sctp"}
    ]);
    assert_eq!(
        fakes.stdin("ports", "ADD")["runtimeConfig"],
        json!({"portMappings": mappings})
    );
    for name in ["plain", "ports-off", "shaper"] {
        let stdin = fakes.stdin(name, "ADD");
        assert!(stdin.get("runtimeConfig").is_none(), "{name}: {stdin}");
    }
    assert_eq!(
        fakes.stdin("merged", "ADD")["runtimeConfig"],
        json!({"mine": 1, "portMappings": mappings})
    );
    // Without mappings a declaring plugin gets an empty list.
    fakes.cni().del(&list, &attachment(), None).await.unwrap();
    assert_eq!(
        fakes.stdin("ports", "DEL")["runtimeConfig"],
        json!({"portMappings": []})
    );
}

#[tokio::test]
async fn check_gives_every_plugin_the_cached_result_in_order() {
    let fakes = Fakes::new();
    fakes.ok_plugin("one");
    fakes.ok_plugin("two");
    let list = list(json!([{"type": "one"}, {"type": "two"}]));
    let cached = CniResult::from_json(canned_result("cached")).unwrap();
    let outcome = fakes
        .cni()
        .check(&list, &attachment(), &cached)
        .await
        .unwrap();
    assert_eq!(outcome, CheckOutcome::Passed);
    assert_eq!(fakes.order(), ["one CHECK", "two CHECK"]);
    for name in ["one", "two"] {
        assert_eq!(
            fakes.stdin(name, "CHECK")["prevResult"],
            canned_result("cached")
        );
        assert_eq!(fakes.env(name, "CHECK")["CNI_COMMAND"], "CHECK");
    }
}

#[tokio::test]
async fn check_is_skipped_before_0_4_0_and_with_disable_check() {
    let fakes = Fakes::new();
    fakes.ok_plugin("one");
    let cached = CniResult::from_json(canned_result("cached")).unwrap();
    let old = list_with(json!({"cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "one"}]}));
    let disabled = list_with(
        json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": true, "plugins": [{"type": "one"}]}),
    );
    for list in [old, disabled] {
        let outcome = fakes
            .cni()
            .check(&list, &attachment(), &cached)
            .await
            .unwrap();
        assert!(
            matches!(outcome, CheckOutcome::Skipped { .. }),
            "{outcome:?}"
        );
    }
    assert!(fakes.order().is_empty(), "no plugin may run");
}

#[tokio::test]
async fn a_failing_check_is_an_error() {
    let fakes = Fakes::new();
    fakes.plugin(
        "one",
        r#"echo '{"cniVersion":"1.0.0","code":3,"msg":"container gone"}'; exit 1"#,
    );
    let list = list(json!([{"type": "one"}]));
    let cached = CniResult::from_json(canned_result("cached")).unwrap();
    let err = fakes
        .cni()
        .check(&list, &attachment(), &cached)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CniError::Plugin {
                command: CniCommand::Check,
                code: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn del_runs_in_reverse_and_tries_every_plugin() {
    let fakes = Fakes::new();
    fakes.ok_plugin("first");
    fakes.plugin(
        "middle",
        r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"lock held"}'; exit 1"#,
    );
    fakes.ok_plugin("last");
    let list =
        list(json!([{"type": "first"}, {"type": "middle"}, {"type": "gone"}, {"type": "last"}]));
    let cached = CniResult::from_json(canned_result("cached")).unwrap();
    let err = fakes
        .cni()
        .del(&list, &attachment(), Some(&cached))
        .await
        .unwrap_err();
    assert_eq!(fakes.order(), ["last DEL", "middle DEL", "first DEL"]);
    for name in ["last", "middle", "first"] {
        assert_eq!(
            fakes.stdin(name, "DEL")["prevResult"],
            canned_result("cached")
        );
    }
    let CniError::Delete { network, failures } = &err else {
        panic!("expected Delete, got {err:?}");
    };
    assert_eq!(network, "testnet");
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(matches!(&failures[0], CniError::PluginNotFound { plugin, .. } if plugin == "gone"));
    assert!(
        matches!(&failures[1], CniError::Plugin { plugin, code: 11, .. } if plugin == "middle")
    );
    let message = err.to_string();
    for needle in [
        "testnet",
        "\"gone\" not found",
        "middle DEL failed: busy",
        "try again later",
        "lock held",
    ] {
        assert!(
            message.contains(needle),
            "{message} should mention {needle:?}"
        );
    }
}

#[tokio::test]
async fn del_without_a_cached_result_sends_no_prev_result() {
    let fakes = Fakes::new();
    fakes.ok_plugin("one");
    let list = list(json!([{"type": "one"}]));
    let mut att = attachment();
    att.netns = PathBuf::new();
    fakes.cni().del(&list, &att, None).await.unwrap();
    assert!(fakes.stdin("one", "DEL").get("prevResult").is_none());
    // A DEL after the namespace is gone has an empty CNI_NETNS.
    assert_eq!(fakes.env("one", "DEL")["CNI_NETNS"], "");
}

#[tokio::test]
async fn a_plugin_error_is_reported_with_code_msg_details_and_stderr() {
    let fakes = Fakes::new();
    fakes.plugin(
        "bridge",
        r#"echo 'failed to set bridge addr' >&2
echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"bad subnet"}'
exit 1"#,
    );
    let err = fakes
        .cni()
        .add(&list(json!([{"type": "bridge"}])), &attachment())
        .await
        .unwrap_err();
    let CniError::Plugin {
        plugin,
        command,
        code,
        msg,
        details,
        stderr,
    } = &err
    else {
        panic!("expected Plugin, got {err:?}");
    };
    assert_eq!(
        (plugin.as_str(), *command, *code),
        ("bridge", CniCommand::Add, 7)
    );
    assert_eq!(
        (msg.as_str(), details.as_str()),
        ("invalid config", "bad subnet")
    );
    assert_eq!(stderr.trim(), "failed to set bridge addr");
    assert_eq!(
        err.to_string(),
        "CNI plugin bridge ADD failed: invalid config (code 7, invalid network config: bad subnet); \
         stderr: failed to set bridge addr"
    );
}

#[tokio::test]
async fn a_failure_without_error_json_reports_exit_status_and_bounded_stderr() {
    let fakes = Fakes::new();
    fakes.plugin(
        "crashy",
        "echo 'panic: runtime error'\nhead -c 100000 /dev/zero | tr '\\0' x >&2\nexit 2",
    );
    let err = fakes
        .cni()
        .add(&list(json!([{"type": "crashy"}])), &attachment())
        .await
        .unwrap_err();
    let CniError::PluginExit {
        plugin,
        status,
        stderr,
        ..
    } = &err
    else {
        panic!("expected PluginExit, got {err:?}");
    };
    assert_eq!(plugin, "crashy");
    assert_eq!(status.code(), Some(2));
    assert_eq!(stderr.len(), invoke::MAX_STDERR_BYTES);
    assert!(err.to_string().contains("exit status: 2"), "{err}");
}

#[tokio::test]
async fn a_plugin_that_hangs_is_killed_with_its_children() {
    let fakes = Fakes::new();
    let pids = fakes.log.join("pids");
    fakes.plugin(
        "hang",
        &format!("sleep 60 &\necho $$ $! > '{}'\nwait", pids.display()),
    );
    let mut cni = fakes.cni();
    cni.timeout = Duration::from_millis(700);
    let started = std::time::Instant::now();
    let err = cni
        .add(&list(json!([{"type": "hang"}])), &attachment())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(&err, CniError::Timeout { plugin, .. } if plugin == "hang"),
        "{err:?}"
    );
    assert!(err.to_string().contains("killed"), "{err}");
    let pids = fs::read_to_string(&pids).unwrap();
    for pid in pids.split_whitespace() {
        assert!(
            gone_or_zombie(pid),
            "process {pid} of the plugin still runs"
        );
    }
}

/// Whether process `pid` has exited (a zombie waiting for its reaper counts:
/// the sleep is reparented to whatever reaps orphans here).
fn gone_or_zombie(pid: &str) -> bool {
    for _ in 0..50 {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
                if state == Some(Some('Z')) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test]
async fn a_missing_plugin_is_reported_before_anything_runs() {
    let fakes = Fakes::new();
    fakes.ok_plugin("present");
    let list = list(json!([{"type": "present"}, {"type": "absent"}]));
    let err = fakes.cni().add(&list, &attachment()).await.unwrap_err();
    assert!(matches!(&err, CniError::PluginNotFound { plugin, .. } if plugin == "absent"));
    assert_eq!(
        err.to_string(),
        format!(
            "CNI plugin \"absent\" not found in {}, /nonexistent/hull-cni-bin",
            fakes.bin.display()
        )
    );
    assert!(fakes.order().is_empty(), "{:?}", fakes.order());
}

#[test]
fn plugins_are_looked_up_in_order_and_must_be_executable() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let cni = Cni {
        bin_dirs: vec![a.clone(), b.clone()],
        ..Cni::default()
    };
    fs::write(a.join("p"), "").unwrap(); // not executable
    fs::write(b.join("p"), "").unwrap();
    fs::set_permissions(b.join("p"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(cni.find_plugin("p").unwrap(), b.join("p"));
    fs::set_permissions(a.join("p"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(cni.find_plugin("p").unwrap(), a.join("p"));
    fs::create_dir(a.join("d")).unwrap(); // a directory is no plugin
    assert!(cni.find_plugin("d").is_err());

    let defaults = Cni::default();
    assert_eq!(
        defaults.bin_dirs,
        [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
    );
}

#[tokio::test]
async fn invalid_results_are_refused_naming_the_plugin_and_field() {
    let fakes = Fakes::new();
    let mut bad = canned_result("x");
    bad["ips"][0]["address"] = json!("10.1.0.5");
    fakes.plugin("badcidr", &prints_on_add(&bad));
    fakes.plugin("silent", "true");
    fakes.plugin("garbage", "echo 'this is not json'");
    fakes.plugin(
        "huge",
        "head -c 2000000 /dev/zero | tr '\\0' ' '; echo '{}'",
    );
    let cases = [
        (
            "badcidr",
            "CNI plugin badcidr ADD returned an invalid result: ips[0].address",
        ),
        (
            "silent",
            "CNI plugin silent ADD returned an invalid result: (result): no result",
        ),
        (
            "garbage",
            "CNI plugin garbage ADD returned an invalid result: (result): stdout is not JSON",
        ),
        (
            "huge",
            "CNI plugin huge ADD wrote more than 1048576 bytes to stdout",
        ),
    ];
    for (name, want) in cases {
        let err = fakes
            .cni()
            .add(&list(json!([{"type": name}])), &attachment())
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with(want), "{name}: {err}");
    }
}

#[tokio::test]
async fn invalid_attachments_are_refused_before_anything_runs() {
    let fakes = Fakes::new();
    fakes.ok_plugin("one");
    let list = list(json!([{"type": "one"}]));
    type Spoil = fn(&mut Attachment);
    let cases: Vec<(Spoil, &str)> = vec![
        (|a| a.container_id = String::new(), "container_id"),
        (|a| a.container_id = "a/b".to_owned(), "container_id"),
        (|a| a.ifname = "averyveryverylongname".to_owned(), "ifname"),
        (|a| a.ifname = "eth 0".to_owned(), "ifname"),
        (|a| a.netns = PathBuf::from("relative/ns"), "netns"),
        (|a| a.pod_name = "web;K8S_POD_UID=x".to_owned(), "pod_name"),
    ];
    for (spoil, field) in cases {
        let mut att = attachment();
        spoil(&mut att);
        let err = fakes.cni().add(&list, &att).await.unwrap_err();
        assert!(
            matches!(&err, CniError::InvalidAttachment { field: f, .. } if *f == field),
            "{field}: {err:?}"
        );
    }
    assert!(fakes.order().is_empty());
}
