//! hulld's ImageService through its CRI socket, against a real registry
//! (Debian's docker-registry on loopback): what `crictl pull/images/inspecti/
//! rmi/imagefsinfo` and the kubelet's image manager see.

use hull_integration::hulld::Hulld;
use hull_integration::registry::TestRegistry;
use hull_integration::test_image::{self, Format, ImageSpec, Layer, Pusher, build_index};
use k8s_cri::v1 as cri;
use tonic::Code;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(
    hulld: &Hulld,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    hulld
        .images()
        .await
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(hulld: &Hulld, image: &str) -> Option<cri::Image> {
    hulld
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
}

async fn list(hulld: &Hulld) -> Vec<cri::Image> {
    hulld
        .images()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

async fn image_fs_used_bytes(hulld: &Hulld) -> (String, u64) {
    let info = hulld
        .images()
        .await
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let fs = &info.image_filesystems[0];
    (
        fs.fs_id.as_ref().expect("fs id").mountpoint.clone(),
        fs.used_bytes.as_ref().expect("used bytes").value,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_and_remove_as_crictl_does() {
    let registry = TestRegistry::start().expect("registry");
    let digest = test_image::push_busybox(&registry.url(), None, "library/busybox:1.36")
        .await
        .expect("push busybox");
    let hulld = Hulld::start().await;
    let (mountpoint, used_before) = image_fs_used_bytes(&hulld).await;
    assert!(
        std::path::Path::new(&mountpoint).starts_with(hulld.state_dir()),
        "the image filesystem is hulld's state dir: {mountpoint}"
    );

    let reference = format!("{}/library/busybox:1.36", registry.host());
    let image_ref = pull(&hulld, &reference, None).await.expect("pull");
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");

    // Every name the kubelet and crictl use finds the same image.
    let repo_digest = format!("{}/library/busybox@{digest}", registry.host());
    for name in [&reference, &image_ref, &repo_digest, &image_ref[7..19]] {
        let image = status(&hulld, name)
            .await
            .unwrap_or_else(|| panic!("ImageStatus {name}"));
        assert_eq!(image.id, image_ref);
        assert_eq!(image.repo_tags, vec![reference.clone()]);
        assert_eq!(image.repo_digests, vec![repo_digest.clone()]);
        assert!(
            image.size > 1_000_000,
            "busybox is over 1 MB: {}",
            image.size
        );
    }
    // The verbose status carries the image config, as `crictl inspecti` shows.
    let verbose = hulld
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(&reference),
            verbose: true,
        })
        .await
        .expect("verbose status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).expect("JSON");
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    let images = list(&hulld).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, image_ref);
    let filtered = hulld
        .images()
        .await
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("127.0.0.1:1/not/there:1"),
            }),
        })
        .await
        .expect("filtered list")
        .into_inner()
        .images;
    assert!(filtered.is_empty());
    let (_, used_after_pull) = image_fs_used_bytes(&hulld).await;
    assert!(used_after_pull > used_before + 1_000_000);

    // Pulling again is a no-op that returns the same id.
    assert_eq!(pull(&hulld, &reference, None).await.unwrap(), image_ref);

    hulld
        .images()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: spec(&reference),
        })
        .await
        .expect("remove");
    assert!(status(&hulld, &reference).await.is_none());
    assert!(list(&hulld).await.is_empty());
    let (_, used_after_remove) = image_fs_used_bytes(&hulld).await;
    assert!(
        used_after_remove < used_after_pull,
        "removal frees disk: {used_after_remove} < {used_after_pull}"
    );
    // Removing what is gone is not an error (the kubelet retries removals).
    hulld
        .images()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: spec(&reference),
        })
        .await
        .expect("remove twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_restart_and_a_crash() {
    let registry = TestRegistry::start().expect("registry");
    let image = ImageSpec::new()
        .layer(Layer::new().file("hello", b"hello\n", 0o644))
        .user("1000:1000")
        .build()
        .expect("image");
    Pusher::new(&registry)
        .push_image("app:v1", &image)
        .await
        .expect("push");
    let named = ImageSpec::new()
        .layer(Layer::new().file("hi", b"hi\n", 0o644))
        .user("nginx")
        .build()
        .expect("image");
    Pusher::new(&registry)
        .push_image("app:named", &named)
        .await
        .expect("push");

    let mut hulld = Hulld::start().await;
    let numeric = format!("{}/app:v1", registry.host());
    let by_name = format!("{}/app:named", registry.host());
    let numeric_id = pull(&hulld, &numeric, None).await.expect("pull");
    let by_name_id = pull(&hulld, &by_name, None).await.expect("pull");

    hulld.restart().await;
    hulld.crash_and_restart().await;

    let images = list(&hulld).await;
    assert_eq!(images.len(), 2);
    let numeric_image = status(&hulld, &numeric).await.expect("after restart");
    assert_eq!(numeric_image.id, numeric_id);
    // The image's User becomes a uid or a username, as the kubelet's
    // runAsNonRoot check expects.
    assert_eq!(numeric_image.uid.map(|u| u.value), Some(1000));
    assert_eq!(numeric_image.username, "");
    let named_image = status(&hulld, &by_name_id).await.expect("by id");
    assert_eq!(named_image.uid, None);
    assert_eq!(named_image.username, "nginx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_with_sigkill_leaves_a_store_that_pulls_again() {
    let registry = TestRegistry::start().expect("registry");
    // Large enough that the pull is still running when hulld is killed.
    let mut noise = vec![0u8; 32 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in noise.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let image = ImageSpec::new()
        .layer(Layer::new().file("big", &noise, 0o644))
        .build()
        .expect("image");
    drop(noise);
    Pusher::new(&registry)
        .push_image("big:1", &image)
        .await
        .expect("push");
    let reference = format!("{}/big:1", registry.host());

    let mut hulld = Hulld::start().await;
    let images = hulld.images().await;
    let reference_for_pull = reference.clone();
    let pulling = tokio::spawn(async move {
        let mut images = images;
        images
            .pull_image(cri::PullImageRequest {
                image: spec(&reference_for_pull),
                ..Default::default()
            })
            .await
    });
    // Kill hulld as soon as the pull has written into the store's scratch
    // area, that is in the middle of the download.
    let scratch = hulld.state_dir().join("images/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while walk(&scratch).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    hulld.crash_and_restart().await;
    let interrupted = pulling.await.expect("pull task");
    assert!(interrupted.is_err(), "the pull was cut by SIGKILL");
    // The restarted hulld knows nothing of the half-pulled image.
    assert!(status(&hulld, &reference).await.is_none());
    assert!(list(&hulld).await.is_empty());
    let id = pull(&hulld, &reference, None)
        .await
        .expect("pull after crash");
    assert_eq!(status(&hulld, &reference).await.expect("pulled").id, id);
    // The store's scratch area is emptied when hulld starts again and the
    // second pull leaves nothing there either.
    let leftovers = walk(&hulld.state_dir().join("images/tmp"));
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_registry_credentials_from_the_kubelet_or_the_config() {
    let registry = TestRegistry::start_with_auth("alice", "s3cret").expect("registry");
    test_image::push_busybox(&registry.url(), registry.auth(), "private/busybox:1")
        .await
        .expect("push");
    let reference = format!("{}/private/busybox:1", registry.host());

    let hulld = Hulld::start().await;
    let err = pull(&hulld, &reference, None)
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(err.message().contains(&reference), "{}", err.message());
    let err = pull(
        &hulld,
        &reference,
        Some(cri::AuthConfig {
            username: "alice".into(),
            password: "wrong".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    // The kubelet's image pull secret arrives as AuthConfig.
    pull(
        &hulld,
        &reference,
        Some(cri::AuthConfig {
            username: "alice".into(),
            password: "s3cret".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("pull with the pull secret");
    drop(hulld);

    // Node-wide credentials from hulld's config.
    let hulld = Hulld::start_with_config(&format!(
        "[registry.hosts.{:?}]\nusername = \"alice\"\npassword = \"s3cret\"\n",
        registry.host()
    ))
    .await;
    pull(&hulld, &reference, None)
        .await
        .expect("pull with configured credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pulls_fail_with_a_code_and_message_that_say_why() {
    let registry = TestRegistry::start().expect("registry");
    let hostile = ImageSpec::new()
        .layer(Layer::new().file("../../etc/hull-escape", b"x", 0o644))
        .build()
        .expect("image");
    Pusher::new(&registry)
        .push_image("hostile:1", &hostile)
        .await
        .expect("push");
    let hulld = Hulld::start().await;

    let missing = format!("{}/no/such:image", registry.host());
    let err = pull(&hulld, &missing, None).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(err.message().contains(&missing), "{}", err.message());

    let err = pull(&hulld, "UPPER/Case::bad", None)
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("UPPER/Case::bad"),
        "{}",
        err.message()
    );

    // Nothing listens on this port: the kubelet should retry.
    let port = hull_integration::registry::free_port().expect("port");
    let err = pull(&hulld, &format!("127.0.0.1:{port}/x:1"), None)
        .await
        .expect_err("unreachable");
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());

    let err = pull(&hulld, &format!("{}/hostile:1", registry.host()), None)
        .await
        .expect_err("hostile layer");
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("hull-escape"), "{}", err.message());
    assert!(list(&hulld).await.is_empty());
    assert!(!hulld.dir().join("etc/hull-escape").exists());

    let err = hulld
        .images()
        .await
        .pull_image(cri::PullImageRequest::default())
        .await
        .expect_err("empty request");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_docker_schema2_and_whiteouts_through_the_cri() {
    let registry = TestRegistry::start().expect("registry");
    let pusher = Pusher::new(&registry);
    // An OCI index whose first entry is arm64: hulld must pick linux/amd64.
    let arm = ImageSpec::new()
        .platform("linux", "arm64")
        .layer(Layer::new().file("arch", b"arm64\n", 0o644))
        .build()
        .expect("arm image");
    let amd = ImageSpec::new()
        .layer(Layer::new().file("arch", b"amd64\n", 0o644))
        .build()
        .expect("amd image");
    let index_digest = pusher
        .push_index(
            "multi/arch:1",
            &build_index(vec![arm, amd.clone()], Format::Oci),
        )
        .await
        .expect("push index");
    // A Docker schema 2 image whose second layer deletes a file of the first.
    let docker = ImageSpec::new()
        .format(Format::Docker)
        .layer(
            Layer::new()
                .dir("etc", 0o755)
                .file("etc/keep", b"kept\n", 0o644)
                .file("etc/remove-me", b"gone\n", 0o644),
        )
        .layer(Layer::new().whiteout("etc/remove-me"))
        .build()
        .expect("docker image");
    pusher
        .push_image("docker/app:2", &docker)
        .await
        .expect("push docker image");

    let hulld = Hulld::start().await;
    let multi = format!("{}/multi/arch:1", registry.host());
    let id = pull(&hulld, &multi, None).await.expect("pull index");
    assert_eq!(id, amd.id(), "the linux/amd64 image of the index");
    let image = status(&hulld, &multi).await.expect("status");
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/multi/arch@{index_digest}", registry.host())],
        "the digest the tag resolved to, as containerd reports it"
    );

    let docker_ref = format!("{}/docker/app:2", registry.host());
    let docker_id = pull(&hulld, &docker_ref, None).await.expect("pull docker");
    assert_eq!(docker_id, docker.id());
    // The block image holds the merged tree: the whiteout removed the file.
    let verbose = hulld
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(&docker_ref),
            verbose: true,
        })
        .await
        .expect("verbose status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).expect("JSON");
    let block_image = info["blockImage"].as_str().expect("block image path");
    let out = tempfile::tempdir().expect("tempdir");
    let extracted = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", out.path().join("tree").display()))
        .arg(block_image)
        .output()
        .expect("fsck.erofs (erofs-utils)");
    assert!(
        extracted.status.success(),
        "{}",
        String::from_utf8_lossy(&extracted.stderr)
    );
    let tree = out.path().join("tree");
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/keep")).unwrap(),
        "kept\n"
    );
    assert!(!tree.join("etc/remove-me").exists());
    assert!(
        !tree.join("etc/.wh.remove-me").exists(),
        "no whiteout marker in the merged tree"
    );
}
