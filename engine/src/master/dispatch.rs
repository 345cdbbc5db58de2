//! Answering decoded wire requests.

use alloc::boxed::Box;

use super::Master;
use crate::time::Instant;
use crate::wire::{Location, MasterError, Request, Response};

impl Master {
    /// Answers a decoded wire request (batch forms included).
    pub fn handle_request(&mut self, now: Instant, request: &Request<'_>) -> Response {
        match request {
            Request::PutStart { writer, key, size, replicas } => {
                Response::PutStart(self.handle_put_start(now, *writer, *key, *size, *replicas))
            }
            Request::PutEnd { writer, key, version, crc32c } => {
                Response::PutEnd(self.handle_put_end(now, *writer, *key, *version, Some(*crc32c)))
            }
            Request::PutRevoke { writer, key, version } => {
                Response::PutRevoke(self.handle_put_revoke(now, *writer, *key, *version))
            }
            Request::GetReplicaList { key } => {
                Response::GetReplicaList(self.handle_get_replica_list(now, *key))
            }
            Request::Exists { key } => Response::Exists(self.handle_exists(now, *key)),
            Request::Remove { key, force } => Response::Remove(self.handle_remove(now, *key, *force)),
            Request::RemoveAll { force } => Response::RemoveAll(self.handle_remove_all(now, *force)),
            Request::MountSegment { node, segment, size } => {
                Response::MountSegment(self.handle_mount_segment(now, *node, *segment, *size))
            }
            Request::UnmountSegment { node, segment } => {
                Response::UnmountSegment(self.handle_unmount_segment(now, *node, *segment))
            }
            Request::Ping { node, incarnation, has_storage } => {
                Response::Ping(self.handle_ping(now, *node, *incarnation, *has_storage))
            }
            Request::AddDiskReplica { key, version, replica, origin } => {
                Response::AddDiskReplica(self.handle_add_disk_replica(now, *key, *version, *replica, *origin))
            }
            Request::RemoveDiskReplica { node, key, version } => {
                Response::RemoveDiskReplica(self.handle_remove_disk_replica(now, *node, *key, *version))
            }
            Request::PersistFailed { node, key, version } => {
                Response::PersistFailed(self.handle_persist_failed(now, *node, *key, *version))
            }
            Request::BatchPutStart { writer, replicas, items } => Response::BatchPutStart(
                items
                    .iter()
                    .map(|(k, size)| self.handle_put_start(now, *writer, *k, *size, *replicas).map(Box::new))
                    .collect(),
            ),
            Request::BatchPutEnd { writer, items } => Response::BatchPutEnd(
                items
                    .iter()
                    .map(|(k, v, crc)| self.handle_put_end(now, *writer, *k, *v, Some(*crc)))
                    .collect(),
            ),
            Request::BatchPutRevoke { writer, items } => Response::BatchPutRevoke(
                items.iter().map(|(k, v)| self.handle_put_revoke(now, *writer, *k, *v)).collect(),
            ),
            Request::BatchGetReplicaList { keys } => Response::BatchGetReplicaList(
                keys.iter().map(|k| self.handle_get_replica_list(now, *k).map(Box::new)).collect(),
            ),
            Request::BatchExists { keys } => {
                Response::BatchExists(keys.iter().map(|k| self.handle_exists(now, *k)).collect())
            }
            Request::BatchRemove { force, keys } => {
                Response::BatchRemove(keys.iter().map(|k| self.handle_remove(now, *k, *force)).collect())
            }
            Request::Locate { segment } => Response::Locate(
                self.segment_owner(*segment)
                    .map(|node| Location { node, serves: None })
                    .ok_or(MasterError::SegmentNotFound),
            ),
            Request::LocateNode { node } => Response::LocateNode(match self.node_incarnation(*node) {
                Some(_) => Ok(Location { node: *node, serves: None }),
                None => Err(MasterError::NodeNotRegistered),
            }),
            Request::ReportCrcFailures { count, .. } => {
                self.crc_failures_reported = self.crc_failures_reported.saturating_add(*count);
                Response::ReportCrcFailures(Ok(()))
            }
            Request::RestoreSegment { node, segment, size } => {
                Response::RestoreSegment(self.handle_restore_segment(now, *node, *segment, *size))
            }
            Request::RestoreReplicas { node, segment, items } => Response::RestoreReplicas(
                items.iter().map(|r| self.handle_restore_replica(now, *node, *segment, r)).collect(),
            ),
            Request::Flush => Response::Flush(self.handle_flush(now).barrier()),
            Request::FlushStatus { barrier } => {
                Response::FlushStatus(self.flush_status(&super::FlushTicket::from_barrier(*barrier)))
            }
        }
    }
}
