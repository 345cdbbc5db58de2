//! Small identifiers shared by every layer: nodes, segments, buckets, versions.

use core::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// A node: one client process that contributes memory segments and, optionally, an
    /// SSD directory. Node ids are stable across restarts of the process so that a
    /// restarted node can re-register what it persisted.
    NodeId
);
id_type!(
    /// A memory segment, unique in the cluster. Chosen by the node that mounts it.
    SegmentId
);
id_type!(
    /// A bucket file inside one node's SSD directory.
    BucketId
);
id_type!(
    /// One run of a node process. A node that restarts comes back with the same
    /// [`NodeId`] and a new incarnation, which tells the master that the memory the old
    /// run contributed is gone.
    Incarnation
);
id_type!(
    /// The version of an object. Every successful put start draws a new, strictly
    /// greater version from the master; every later registration (a disk replica, a put
    /// end) names it, so that a late message about an older put cannot resurrect it.
    ObjectVersion
);

impl ObjectVersion {
    /// The version after this one.
    pub const fn next(self) -> ObjectVersion {
        ObjectVersion(self.0.saturating_add(1))
    }
}
