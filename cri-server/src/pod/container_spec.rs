//! From the kubelet's ContainerConfig and the image's config to the inputs
//! of hull-proto's OCI spec builder, with Kubernetes' rules for command,
//! args, env, working dir and user.

use hull_proto::spec::{BindMount, ContainerSpecInput, Resources, SeccompProfile};
use k8s_cri::v1 as cri;

/// Why a container config cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerConfigError {
    #[error("no command: the container sets none and image {image} has no Entrypoint or Cmd")]
    NoCommand { image: String },
    #[error("seccomp profile {profile:?}: {reason}")]
    Seccomp { profile: String, reason: String },
}

/// The spec inputs and the user the agent must resolve in the rootfs
/// ("name[:group]"; empty when numeric ids are known).
pub struct ContainerInputs {
    pub spec: ContainerSpecInput,
    pub user: String,
}

/// Builds the spec inputs. `image_config` is the OCI image config JSON
/// (`{"config": {"Entrypoint": ..., "Cmd": ..., "Env": ..., ...}}`);
/// `mounts` are the guest-side bind mounts of the container's host mounts.
pub fn container_inputs(
    config: &cri::ContainerConfig,
    image_name: &str,
    image_config: &serde_json::Value,
    mounts: Vec<BindMount>,
) -> Result<ContainerInputs, ContainerConfigError> {
    let image = &image_config["config"];
    let strings = |key: &str| -> Vec<String> {
        image[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Kubernetes: `command` replaces the Entrypoint (and then the image's
    // Cmd is dropped); `args` replaces the Cmd.
    let mut args = if config.command.is_empty() {
        strings("Entrypoint")
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(strings("Cmd"));
    }
    if args.is_empty() {
        return Err(ContainerConfigError::NoCommand {
            image: image_name.to_string(),
        });
    }

    let mut env: Vec<String> = strings("Env");
    for kv in &config.envs {
        let entry = format!("{}={}", kv.key, kv.value);
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(kv.key.as_str()))
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
    let working_dir = if config.working_dir.is_empty() {
        image["WorkingDir"].as_str().unwrap_or("").to_string()
    } else {
        config.working_dir.clone()
    };

    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let privileged = security.privileged;
    let (uid, gid, user) = container_user(&security, image["User"].as_str().unwrap_or(""));
    let resources = linux.resources.clone().unwrap_or_default();
    let capabilities = security.capabilities.clone().unwrap_or_default();
    let (capabilities_add, capabilities_drop) = if privileged {
        (vec!["ALL".to_string()], Vec::new())
    } else {
        (
            capabilities.add_capabilities,
            capabilities.drop_capabilities,
        )
    };
    let seccomp = if privileged {
        SeccompProfile::Unconfined
    } else {
        seccomp_profile(security.seccomp.as_ref())?
    };

    let spec = ContainerSpecInput {
        args,
        env,
        working_dir,
        tty: config.tty,
        uid,
        gid,
        supplemental_groups: security
            .supplemental_groups
            .iter()
            .filter_map(|g| u32::try_from(*g).ok())
            .collect(),
        readonly_rootfs: security.readonly_rootfs,
        no_new_privileges: security.no_new_privs,
        capabilities_add,
        capabilities_drop,
        seccomp,
        resources: resources_from_cri(&resources),
        mounts,
        share_pod_namespaces: true,
        pod_dns_and_hosts: true,
        annotations: config.annotations.clone(),
        privileged,
    };
    Ok(ContainerInputs { spec, user })
}

/// The limits of CRI `LinuxContainerResources` that hull applies in the
/// guest (hugepages and unified entries are not).
pub fn resources_from_cri(resources: &cri::LinuxContainerResources) -> Resources {
    Resources {
        cpu_shares: u64::try_from(resources.cpu_shares).unwrap_or(0),
        cpu_quota: resources.cpu_quota,
        cpu_period: u64::try_from(resources.cpu_period).unwrap_or(0),
        memory_limit_bytes: resources.memory_limit_in_bytes,
        pids_limit: 0,
        cpuset_cpus: resources.cpuset_cpus.clone(),
    }
}

/// (uid, gid, user-to-resolve): the kubelet's runAsUser/runAsGroup win;
/// a runAsUsername or the image's named User is resolved by the agent.
fn container_user(
    security: &cri::LinuxContainerSecurityContext,
    image_user: &str,
) -> (u32, u32, String) {
    let group = security
        .run_as_group
        .as_ref()
        .and_then(|g| u32::try_from(g.value).ok());
    if let Some(uid) = security
        .run_as_user
        .as_ref()
        .and_then(|u| u32::try_from(u.value).ok())
    {
        return match group {
            Some(gid) => (uid, gid, String::new()),
            // The group comes from the user's passwd entry in the rootfs.
            None => (uid, 0, uid.to_string()),
        };
    }
    let name = if security.run_as_username.is_empty() {
        image_user.to_string()
    } else {
        security.run_as_username.clone()
    };
    if name.is_empty() {
        return (0, group.unwrap_or(0), String::new());
    }
    match group {
        // An explicit group overrides the image's.
        Some(gid) => {
            let user = name.split(':').next().unwrap_or("").to_string();
            (0, gid, format!("{user}:{gid}"))
        }
        None => (0, 0, name),
    }
}

fn seccomp_profile(
    profile: Option<&cri::SecurityProfile>,
) -> Result<SeccompProfile, ContainerConfigError> {
    use cri::security_profile::ProfileType;
    let Some(profile) = profile else {
        // containerd's default for the CRI is unconfined unless the
        // kubelet asks; the kubelet asks RuntimeDefault when the pod (or
        // the kubelet's SeccompDefault) does. hull errs on the safe side.
        return Ok(SeccompProfile::RuntimeDefault);
    };
    match ProfileType::try_from(profile.profile_type) {
        Ok(ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
        Ok(ProfileType::RuntimeDefault) => Ok(SeccompProfile::RuntimeDefault),
        Ok(ProfileType::Localhost) => {
            let path = &profile.localhost_ref;
            let text = std::fs::read(path).map_err(|err| ContainerConfigError::Seccomp {
                profile: path.clone(),
                reason: format!("cannot read it: {err}"),
            })?;
            hull_proto::spec::localhost(&text)
                .map(SeccompProfile::Localhost)
                .map_err(|err| ContainerConfigError::Seccomp {
                    profile: path.clone(),
                    reason: err.to_string(),
                })
        }
        Err(_) => Err(ContainerConfigError::Seccomp {
            profile: profile.profile_type.to_string(),
            reason: "unknown profile type".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    fn image() -> serde_json::Value {
        json!({"config": {
            "Entrypoint": ["/entry"],
            "Cmd": ["default-arg"],
            "Env": ["PATH=/usr/bin:/bin", "A=image"],
            "WorkingDir": "/srv",
            "User": "nginx"
        }})
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let run = |command: &[&str], args: &[&str]| {
            let mut c = config();
            c.command = command.iter().map(|s| s.to_string()).collect();
            c.args = args.iter().map(|s| s.to_string()).collect();
            container_inputs(&c, "img", &image(), Vec::new())
                .unwrap()
                .spec
                .args
        };
        assert_eq!(run(&[], &[]), ["/entry", "default-arg"]);
        assert_eq!(run(&[], &["x"]), ["/entry", "x"]);
        assert_eq!(run(&["/bin/sh"], &[]), ["/bin/sh"]);
        assert_eq!(
            run(&["/bin/sh"], &["-c", "true"]),
            ["/bin/sh", "-c", "true"]
        );
        let err = container_inputs(&config(), "empty", &json!({}), Vec::new())
            .err()
            .unwrap();
        assert_eq!(
            err,
            ContainerConfigError::NoCommand {
                image: "empty".into()
            }
        );
    }

    #[test]
    fn env_overrides_the_image_and_working_dir_defaults_to_it() {
        let mut c = config();
        c.envs = vec![
            cri::KeyValue {
                key: "A".into(),
                value: "pod".into(),
            },
            cri::KeyValue {
                key: "B".into(),
                value: "x=y".into(),
            },
        ];
        let inputs = container_inputs(&c, "img", &image(), Vec::new()).unwrap();
        assert_eq!(inputs.spec.env, ["PATH=/usr/bin:/bin", "A=pod", "B=x=y"]);
        assert_eq!(inputs.spec.working_dir, "/srv");
        assert_eq!(
            inputs.user, "nginx",
            "the image's named user is resolved in the guest"
        );
    }

    #[test]
    fn users_from_the_security_context_win() {
        let security =
            |uid: Option<i64>, gid: Option<i64>, name: &str| cri::LinuxContainerSecurityContext {
                run_as_user: uid.map(|value| cri::Int64Value { value }),
                run_as_group: gid.map(|value| cri::Int64Value { value }),
                run_as_username: name.into(),
                ..Default::default()
            };
        assert_eq!(
            container_user(&security(Some(1000), Some(2000), ""), "nginx"),
            (1000, 2000, String::new())
        );
        assert_eq!(
            container_user(&security(Some(1000), None, ""), ""),
            (1000, 0, "1000".into())
        );
        assert_eq!(
            container_user(&security(None, None, "web"), "nginx"),
            (0, 0, "web".into())
        );
        assert_eq!(
            container_user(&security(None, Some(5), ""), "nginx:www"),
            (0, 5, "nginx:5".into())
        );
        assert_eq!(
            container_user(&security(None, None, ""), ""),
            (0, 0, String::new())
        );
    }

    #[test]
    fn privileged_gets_every_capability_and_no_seccomp() {
        let mut c = config();
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let inputs = container_inputs(&c, "img", &image(), Vec::new()).unwrap();
        assert!(inputs.spec.privileged);
        assert_eq!(inputs.spec.capabilities_add, ["ALL"]);
        assert!(matches!(inputs.spec.seccomp, SeccompProfile::Unconfined));
        let plain = container_inputs(&config(), "img", &image(), Vec::new()).unwrap();
        assert!(matches!(plain.spec.seccomp, SeccompProfile::RuntimeDefault));
    }

    #[test]
    fn a_missing_localhost_profile_is_named() {
        let profile = cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Localhost as i32,
            localhost_ref: "/var/lib/kubelet/seccomp/missing.json".into(),
        };
        let err = seccomp_profile(Some(&profile)).err().unwrap();
        assert!(err.to_string().contains("missing.json"), "{err}");
    }
}
