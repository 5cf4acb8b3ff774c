//! Credentials (from the request and from the config file), mirrors, and
//! single-flight pulls, against real registries on loopback.

mod common;

use anyhow::Result;
use base64::Engine as _;
use hull_integration::registry::{RegistryOptions, TestRegistry};
use hull_integration::test_image::{ImageSpec, Layer, Pusher};
use image_service::{ErrorKind, ImageStore, PullAuth, RegistryConfig, RegistryHost};

fn small_image(tag: &[u8]) -> Result<hull_integration::test_image::BuiltImage> {
    Ok(ImageSpec::new()
        .layer(Layer::new().file("etc/release", tag, 0o644))
        .layer(Layer::new().file("data", vec![tag[0]; 300_000], 0o644))
        .build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_with_htpasswd_needs_the_right_credentials() -> Result<()> {
    let registry = TestRegistry::start_with_auth("alice", "s3cret")?;
    Pusher::new(&registry)
        .push_image("private/app:1", &small_image(b"private")?)
        .await?;
    let reference = format!("{}/private/app:1", registry.host());

    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;
    let err = store
        .pull(&reference, None)
        .await
        .expect_err("anonymous pull");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    let wrong = PullAuth {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = store
        .pull(&reference, Some(wrong))
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");

    let by_password = PullAuth {
        username: "alice".into(),
        password: "s3cret".into(),
        server_address: registry.host(),
        ..Default::default()
    };
    let image = store.pull(&reference, Some(by_password)).await?;
    store.remove(&image.id).await?;

    let by_auth_string = PullAuth {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret"),
        ..Default::default()
    };
    store.pull(&reference, Some(by_auth_string)).await?;

    // Credentials from the config file, for a store with no request auth.
    let mut config = RegistryConfig::default();
    config.hosts.insert(
        registry.host(),
        RegistryHost {
            username: Some("alice".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        },
    );
    let root2 = tempfile::tempdir()?;
    let configured = ImageStore::open(root2.path(), config)?;
    assert_eq!(configured.pull(&reference, None).await?.id, image.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_the_image_when_the_registry_cannot() -> Result<()> {
    let mirror = TestRegistry::start()?;
    let image = small_image(b"mirrored")?;
    // The mirror holds the image under the same repository name.
    Pusher::new(&mirror)
        .push_image("team/app:1", &image)
        .await?;
    let mut config = RegistryConfig::default();
    config.hosts.insert(
        "registry.invalid:5000".into(),
        RegistryHost {
            mirrors: vec![mirror.url()],
            ..Default::default()
        },
    );
    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), config)?;
    let pulled = store.pull("registry.invalid:5000/team/app:1", None).await?;
    assert_eq!(pulled.id, image.id());
    // Names are the upstream registry's, as containerd reports them.
    assert_eq!(
        pulled.repo_tags,
        vec!["registry.invalid:5000/team/app:1".to_string()]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_without_the_image_falls_back_to_the_registry() -> Result<()> {
    let upstream = TestRegistry::start()?;
    let empty_mirror = TestRegistry::start()?;
    let image = small_image(b"upstream")?;
    Pusher::new(&upstream)
        .push_image("team/app:1", &image)
        .await?;
    let mut config = RegistryConfig::default();
    config.hosts.insert(
        upstream.host(),
        RegistryHost {
            mirrors: vec![empty_mirror.url()],
            ..Default::default()
        },
    );
    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), config)?;
    assert_eq!(
        store
            .pull(&format!("{}/team/app:1", upstream.host()), None)
            .await?
            .id,
        image.id()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_repeated_pulls_fetch_each_blob_once() -> Result<()> {
    let registry = TestRegistry::start_with(RegistryOptions {
        access_log: true,
        ..Default::default()
    })?;
    let image = small_image(b"once")?;
    Pusher::new(&registry)
        .push_image("team/once:1", &image)
        .await?;
    let reference = format!("{}/team/once:1", registry.host());
    let by_digest = format!("{}/team/once@{}", registry.host(), image.manifest.digest);
    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;

    let before: Vec<usize> = image
        .layers
        .iter()
        .map(|l| registry.requests("GET", &l.digest))
        .collect();
    let pulls = (0..4).map(|_| {
        let store = store.clone();
        let reference = reference.clone();
        tokio::spawn(async move { store.pull(&reference, None).await })
    });
    let mut ids = Vec::new();
    for pull in pulls {
        ids.push(pull.await??.id);
    }
    ids.dedup();
    assert_eq!(ids, vec![image.id().to_string()]);
    // A second pull by tag (re-resolves the tag) and one by digest (no request).
    store.pull(&reference, None).await?;
    let manifest_gets = registry.requests("GET", &image.manifest.digest);
    let pulled = store.pull(&by_digest, None).await?;
    assert_eq!(pulled.id, image.id());
    assert_eq!(
        registry.requests("GET", &image.manifest.digest),
        manifest_gets
    );

    for (layer, before) in image.layers.iter().zip(before) {
        assert_eq!(
            registry.requests("GET", &layer.digest) - before,
            1,
            "layer {} fetched more than once",
            layer.digest
        );
    }
    assert_eq!(registry.requests("GET", &image.config.digest), 1);
    Ok(())
}
