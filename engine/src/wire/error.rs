//! What the master answers when it refuses a request, and the stable codes those
//! answers carry on the wire. A leaf: the master and the codec both use it, it uses
//! neither.

/// Why the master refused a request. Every variant has a stable non-zero wire code
/// ([`MasterError::code`]); a refused request never changes the master's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    /// A put of zero bytes (values are never empty).
    #[error("invalid size: values are never empty")]
    InvalidSize,
    /// A put asked for zero replicas, or more than the master allows.
    #[error("invalid replica count")]
    InvalidReplicaCount,
    /// A segment of zero usable bytes, or one too large to address.
    #[error("invalid segment size")]
    InvalidSegmentSize,
    /// No object has this key.
    #[error("object not found")]
    ObjectNotFound,
    /// The key already holds a complete object, or a put younger than the discard
    /// timeout.
    #[error("object already exists")]
    ObjectAlreadyExists,
    /// The object is leased to a reader; only a forced remove may take it.
    #[error("object has a read lease")]
    ObjectHasLease,
    /// The object's put has not ended yet.
    #[error("replica is not ready")]
    ReplicaNotReady,
    /// Only the node that started a put may end or revoke it.
    #[error("only the writer may end or revoke a put")]
    NotWriter,
    /// The put named is not in progress (it ended already, or was revoked, preempted or
    /// discarded).
    #[error("no put of this version is in progress")]
    PutNotInProgress,
    /// The version named is not the object's current version.
    #[error("stale object version")]
    StaleVersion,
    /// No segment has room, even after eviction.
    #[error("no space in any segment")]
    NoSpace,
    /// The value is larger than any mounted segment could ever hold.
    #[error("object larger than any segment")]
    ObjectTooLarge,
    /// A segment with this id is already mounted.
    #[error("segment already mounted")]
    SegmentAlreadyMounted,
    /// No segment with this id is mounted.
    #[error("segment not found")]
    SegmentNotFound,
    /// The segment belongs to another node.
    #[error("segment belongs to another node")]
    NotSegmentOwner,
    /// The node has not registered (pinged) or has expired.
    #[error("node not registered")]
    NodeNotRegistered,
    /// The object has no disk replica on that node.
    #[error("disk replica not found")]
    DiskReplicaNotFound,
    /// A code this build does not know, sent by a newer master. It is an answer (the
    /// request was refused), not a broken message.
    #[error("unknown master error code {0}")]
    Unknown(u16),
}

impl MasterError {
    /// Every error, in code order.
    pub const ALL: [MasterError; 17] = [
        MasterError::InvalidSize,
        MasterError::InvalidReplicaCount,
        MasterError::InvalidSegmentSize,
        MasterError::ObjectNotFound,
        MasterError::ObjectAlreadyExists,
        MasterError::ObjectHasLease,
        MasterError::ReplicaNotReady,
        MasterError::NotWriter,
        MasterError::PutNotInProgress,
        MasterError::StaleVersion,
        MasterError::NoSpace,
        MasterError::ObjectTooLarge,
        MasterError::SegmentAlreadyMounted,
        MasterError::SegmentNotFound,
        MasterError::NotSegmentOwner,
        MasterError::NodeNotRegistered,
        MasterError::DiskReplicaNotFound,
    ];

    /// The stable wire code (never 0, which means success on the wire).
    pub const fn code(self) -> u16 {
        match self {
            MasterError::InvalidSize => 1,
            MasterError::InvalidReplicaCount => 2,
            MasterError::InvalidSegmentSize => 3,
            MasterError::ObjectNotFound => 4,
            MasterError::ObjectAlreadyExists => 5,
            MasterError::ObjectHasLease => 6,
            MasterError::ReplicaNotReady => 7,
            MasterError::NotWriter => 8,
            MasterError::PutNotInProgress => 9,
            MasterError::StaleVersion => 10,
            MasterError::NoSpace => 11,
            MasterError::ObjectTooLarge => 12,
            MasterError::SegmentAlreadyMounted => 13,
            MasterError::SegmentNotFound => 14,
            MasterError::NotSegmentOwner => 15,
            MasterError::NodeNotRegistered => 16,
            MasterError::DiskReplicaNotFound => 17,
            MasterError::Unknown(code) => code,
        }
    }

    /// The known error with this wire code.
    pub fn from_code(code: u16) -> Option<MasterError> {
        MasterError::ALL.iter().copied().find(|e| e.code() == code)
    }

    /// The error a non-zero wire code stands for: a known one, else
    /// [`MasterError::Unknown`].
    pub fn from_wire(code: u16) -> MasterError {
        MasterError::from_code(code).unwrap_or(MasterError::Unknown(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_non_zero_and_round_trip() {
        for (i, e) in MasterError::ALL.iter().enumerate() {
            assert_eq!(e.code() as usize, i + 1);
            assert_eq!(MasterError::from_code(e.code()), Some(*e));
        }
        assert_eq!(MasterError::from_code(0), None);
        assert_eq!(MasterError::from_code(MasterError::ALL.len() as u16 + 1), None);
        let unknown = MasterError::ALL.len() as u16 + 1;
        assert_eq!(MasterError::from_wire(unknown), MasterError::Unknown(unknown));
        assert_eq!(MasterError::from_wire(unknown).code(), unknown);
        assert_eq!(MasterError::from_wire(4), MasterError::ObjectNotFound);
    }
}
