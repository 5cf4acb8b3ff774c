//! ImageFsInfo: what the image store uses on disk, for the kubelet's image GC.

use k8s_cri::v1 as cri;

use super::{CriService, now_nanos};
use crate::error::CriError;

impl CriService {
    pub async fn image_fs_info(
        &self,
        _: cri::ImageFsInfoRequest,
    ) -> Result<cri::ImageFsInfoResponse, CriError> {
        let usage = self.images.fs_usage()?;
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: usage.mountpoint.display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value {
                    value: usage.used_bytes,
                }),
                inodes_used: Some(cri::UInt64Value {
                    value: usage.inodes_used,
                }),
            }],
            container_filesystems: Vec::new(),
        })
    }
}
