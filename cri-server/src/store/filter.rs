//! The CRI's list filters, with the semantics containerd gives them: an id
//! filter is first resolved as an id prefix; state and pod filters must match
//! exactly; every key of the label selector must be present with that value.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::container::ContainerRecord;
use super::sandbox::SandboxRecord;

/// Every `selector` entry is a label with the same value.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// Whether `sandbox` passes `filter`, whose `id` was already resolved from a
/// prefix to a full id where possible.
pub fn sandbox_matches(sandbox: &SandboxRecord, filter: &cri::PodSandboxFilter) -> bool {
    if !filter.id.is_empty() && filter.id != sandbox.metadata.id {
        return false;
    }
    if let Some(state) = &filter.state
        && state.state != sandbox.status.state.to_cri() as i32
    {
        return false;
    }
    labels_match(sandbox.labels(), &filter.label_selector)
}

/// Whether `container` passes `filter`, whose `id` and `pod_sandbox_id` were
/// already resolved from prefixes to full ids where possible.
pub fn container_matches(container: &ContainerRecord, filter: &cri::ContainerFilter) -> bool {
    if !filter.id.is_empty() && filter.id != container.metadata.id {
        return false;
    }
    if !filter.pod_sandbox_id.is_empty() && filter.pod_sandbox_id != container.metadata.sandbox_id {
        return false;
    }
    if let Some(state) = &filter.state
        && state.state != container.status.state.to_cri() as i32
    {
        return false;
    }
    labels_match(container.labels(), &filter.label_selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::container::{ContainerMetadata, ContainerState, ContainerStatus};
    use crate::store::sandbox::{SandboxMetadata, SandboxState, SandboxStatus};

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sandbox(id: &str, state: SandboxState, l: &[(&str, &str)]) -> SandboxRecord {
        SandboxRecord {
            metadata: SandboxMetadata {
                id: id.into(),
                config: cri::PodSandboxConfig {
                    labels: labels(l),
                    ..Default::default()
                },
                runtime_handler: String::new(),
                created_at: 1,
            },
            status: SandboxStatus {
                state,
                ..Default::default()
            },
        }
    }

    fn container(id: &str, pod: &str, state: ContainerState) -> ContainerRecord {
        ContainerRecord {
            metadata: ContainerMetadata {
                id: id.into(),
                sandbox_id: pod.into(),
                config: cri::ContainerConfig {
                    labels: labels(&[("app", "web")]),
                    ..Default::default()
                },
                image_id: String::new(),
                image_ref: String::new(),
                log_path: String::new(),
                created_at: 1,
            },
            status: ContainerStatus {
                state,
                ..Default::default()
            },
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        let s = sandbox("a", SandboxState::Ready, &[]);
        assert!(sandbox_matches(&s, &cri::PodSandboxFilter::default()));
    }

    #[test]
    fn sandbox_state_id_and_labels_all_apply() {
        let s = sandbox(
            "abc",
            SandboxState::Ready,
            &[("app", "web"), ("tier", "front")],
        );
        let ready = Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxReady as i32,
        });
        let notready = Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxNotready as i32,
        });
        let f = |id: &str, state, sel: &[(&str, &str)]| cri::PodSandboxFilter {
            id: id.into(),
            state,
            label_selector: labels(sel),
        };
        assert!(sandbox_matches(&s, &f("abc", ready, &[("app", "web")])));
        assert!(!sandbox_matches(&s, &f("abd", None, &[])));
        assert!(!sandbox_matches(&s, &f("", notready, &[])));
        assert!(!sandbox_matches(&s, &f("", None, &[("app", "db")])));
        assert!(!sandbox_matches(&s, &f("", None, &[("missing", "")])));
        assert!(sandbox_matches(
            &s,
            &f("", None, &[("app", "web"), ("tier", "front")])
        ));
    }

    #[test]
    fn container_filter_checks_pod_and_state() {
        let c = container("c1", "pod1", ContainerState::Running);
        let running = Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        });
        let exited = Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerExited as i32,
        });
        let f = |id: &str, pod: &str, state| cri::ContainerFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            state,
            label_selector: labels(&[("app", "web")]),
        };
        assert!(container_matches(&c, &f("c1", "pod1", running)));
        assert!(!container_matches(&c, &f("", "pod2", None)));
        assert!(!container_matches(&c, &f("", "", exited)));
        assert!(!container_matches(&c, &f("c2", "", None)));
    }
}
