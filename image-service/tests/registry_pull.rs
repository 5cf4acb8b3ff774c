//! Pulls from a real registry (Debian's docker-registry on loopback) into a
//! fresh store, and checks the resulting EROFS image with erofs-utils.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use anyhow::Result;
use hull_integration::registry::TestRegistry;
use hull_integration::test_image::{
    self, Compression, Format, ImageSpec, Layer, Pusher, build_index,
};
use image_service::{ErrorKind, ImageStore, RegistryConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_pulls_converts_and_extracts_with_fsck_erofs() -> Result<()> {
    let registry = TestRegistry::start()?;
    let digest = test_image::push_busybox(&registry.url(), None, "busybox:latest").await?;
    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;

    let reference = format!("{}/busybox:latest", registry.host());
    let image = store.pull(&reference, None).await?;
    assert_eq!(image.repo_tags, vec![reference.clone()]);
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/busybox@{digest}", registry.host())]
    );
    assert!(image.block_image.is_file());
    assert_eq!(image.config["config"]["Cmd"][0], "sh");

    let out = tempfile::tempdir()?;
    let tree = common::fsck_and_extract(&image.block_image, out.path())?;
    let busybox = std::fs::read(tree.join("bin/busybox"))?;
    assert_eq!(busybox, std::fs::read(test_image::BUSYBOX)?);
    assert_eq!(
        std::fs::metadata(tree.join("bin/busybox"))?
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(tree.join("bin/sh"))?.to_str(),
        Some("/bin/busybox")
    );
    assert_eq!(
        std::fs::metadata(tree.join("tmp"))?.permissions().mode() & 0o7777,
        0o1777
    );
    assert!(common::tmp_leftovers(root.path())?.is_empty());

    // Lookups by every name the CRI uses.
    assert_eq!(store.get(&reference).map(|i| i.id), Some(image.id.clone()));
    assert_eq!(
        store.get(&image.id[7..19]).map(|i| i.id),
        Some(image.id.clone())
    );
    assert_eq!(
        store.get(&image.repo_digests[0]).map(|i| i.id),
        Some(image.id.clone())
    );
    assert_eq!(store.list().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_merge_with_whiteouts_opaque_dirs_links_xattrs_and_owners() -> Result<()> {
    let registry = TestRegistry::start()?;
    let base = Layer::new()
        .dir("etc", 0o755)
        .file("etc/keep", b"kept\n", 0o644)
        .file("etc/remove-me", b"gone\n", 0o644)
        .dir("var/cache", 0o755)
        .file("var/cache/old1", b"1", 0o644)
        .file("var/cache/old2", b"2", 0o644)
        .dir("home/user", 0o700)
        .owner(1000, 1000)
        .file("home/user/data", vec![7u8; 100_000], 0o640)
        .owner(1000, 100)
        .char_device("dev-null", 1, 3)
        .fifo("pipe");
    let top = Layer::new()
        .compression(Compression::Zstd)
        .whiteout("etc/remove-me")
        .opaque("var/cache")
        .file("var/cache/new", b"new\n", 0o644)
        .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o4755)
        .xattr(
            "security.capability",
            [
                1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .xattr("user.origin", b"hull-test")
        .hardlink("bin/tool-link", "bin/tool")
        .symlink("etc/current", "keep");
    let image = ImageSpec::new()
        .layer(base)
        .layer(top)
        .user("1000:1000")
        .build()?;
    Pusher::new(&registry)
        .push_image("test/multi:v1", &image)
        .await?;

    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;
    let pulled = store
        .pull(&format!("{}/test/multi:v1", registry.host()), None)
        .await?;
    assert_eq!(pulled.id, image.id());
    assert_eq!(pulled.user, "1000:1000");
    let layer_bytes: u64 = image.layers.iter().map(|l| l.data.len() as u64).sum();
    assert_eq!(pulled.size, layer_bytes + image.config.data.len() as u64);

    let out = tempfile::tempdir()?;
    let tree = common::fsck_and_extract(&pulled.block_image, out.path())?;
    let files = common::list_tree(&tree)?;
    assert!(!files.contains(&"etc/remove-me".to_string()), "{files:?}");
    assert!(files.contains(&"etc/keep".to_string()));
    let cache: Vec<_> = files
        .iter()
        .filter(|f| f.starts_with("var/cache/"))
        .collect();
    assert_eq!(cache, ["var/cache/new"]);
    let data = std::fs::metadata(tree.join("home/user/data"))?;
    assert_eq!(
        (data.uid(), data.gid(), data.mode() & 0o7777, data.len()),
        (1000, 100, 0o640, 100_000)
    );
    let home = std::fs::metadata(tree.join("home/user"))?;
    assert_eq!((home.uid(), home.mode() & 0o7777), (1000, 0o700));
    assert_eq!(
        std::fs::read_link(tree.join("etc/current"))?.to_str(),
        Some("keep")
    );

    // What extraction cannot show (setuid, xattrs, hard links, device
    // numbers), the kernel shows: mount the image read-only.
    let mounted = common::Mounted::new(&pulled.block_image)?;
    let m = mounted.path();
    let tool = std::fs::metadata(m.join("bin/tool"))?;
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.nlink(), 2);
    assert_eq!(
        std::fs::metadata(m.join("bin/tool-link"))?.ino(),
        tool.ino()
    );
    assert_eq!(
        common::xattr(&m.join("bin/tool"), "user.origin")?,
        b"hull-test"
    );
    assert_eq!(
        common::xattr(&m.join("bin/tool"), "security.capability")?.len(),
        20
    );
    let null = std::fs::symlink_metadata(m.join("dev-null"))?;
    assert!(null.file_type().is_char_device());
    assert_eq!(common::dev_major_minor(null.rdev()), (1, 3));
    assert!(
        std::fs::symlink_metadata(m.join("pipe"))?
            .file_type()
            .is_fifo()
    );
    assert_eq!(std::fs::read(m.join("home/user/data"))?, vec![7u8; 100_000]);
    assert!(!m.join("etc/remove-me").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index_picks_linux_amd64_listed_after_arm64() -> Result<()> {
    let registry = TestRegistry::start()?;
    let arm = ImageSpec::new()
        .platform("linux", "arm64")
        .layer(Layer::new().file("arch", b"arm64\n", 0o644))
        .build()?;
    let amd = ImageSpec::new()
        .layer(Layer::new().file("arch", b"amd64\n", 0o644))
        .build()?;
    let index = build_index(vec![arm, amd.clone()], Format::Oci);
    let index_digest = Pusher::new(&registry)
        .push_index("multi/arch:1", &index)
        .await?;

    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;
    let reference = format!("{}/multi/arch:1", registry.host());
    let image = store.pull(&reference, None).await?;
    assert_eq!(image.id, amd.id());
    // containerd reports the digest the tag resolved to: the index's.
    assert_eq!(
        image.repo_digests,
        vec![format!("{}/multi/arch@{index_digest}", registry.host())]
    );
    let out = tempfile::tempdir()?;
    let tree = common::fsck_and_extract(&image.block_image, out.path())?;
    assert_eq!(std::fs::read_to_string(tree.join("arch"))?, "amd64\n");

    // An index without linux/amd64 is refused with the platforms it offers.
    let arm_only = build_index(
        vec![
            ImageSpec::new()
                .platform("linux", "arm64")
                .layer(Layer::new().file("x", b"", 0o644))
                .build()?,
        ],
        Format::Oci,
    );
    Pusher::new(&registry)
        .push_index("multi/armonly:1", &arm_only)
        .await?;
    let err = store
        .pull(&format!("{}/multi/armonly:1", registry.host()), None)
        .await
        .expect_err("no amd64 image");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_image_with_uncompressed_and_gzip_layers() -> Result<()> {
    let registry = TestRegistry::start()?;
    let image = ImageSpec::new()
        .format(Format::Docker)
        .layer(
            Layer::new()
                .compression(Compression::None)
                .file("plain", b"tar\n", 0o644),
        )
        .layer(Layer::new().file("gz", b"gzip\n", 0o644))
        .build()?;
    Pusher::new(&registry)
        .push_image("docker/image:v2", &image)
        .await?;
    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;
    let pulled = store
        .pull(&format!("{}/docker/image:v2", registry.host()), None)
        .await?;
    let out = tempfile::tempdir()?;
    let tree = common::fsck_and_extract(&pulled.block_image, out.path())?;
    assert_eq!(std::fs::read_to_string(tree.join("plain"))?, "tar\n");
    assert_eq!(std::fs::read_to_string(tree.join("gz"))?, "gzip\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_and_bad_reference_have_their_own_kinds() -> Result<()> {
    let registry = TestRegistry::start()?;
    let root = tempfile::tempdir()?;
    let store = ImageStore::open(root.path(), RegistryConfig::default())?;
    let err = store
        .pull(&format!("{}/no/such:image", registry.host()), None)
        .await
        .expect_err("not pushed");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = store
        .pull("Not A Reference", None)
        .await
        .expect_err("invalid");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // A port nothing listens on.
    let port = hull_integration::registry::free_port()?;
    let err = store
        .pull(&format!("127.0.0.1:{port}/x:1"), None)
        .await
        .expect_err("unreachable");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    Ok(())
}
