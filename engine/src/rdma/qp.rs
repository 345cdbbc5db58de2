//! A reliable-connected queue pair: its states, the attribute masks of a modify call,
//! the kernel's transition table, and the machine that brings a QP up and down.
//!
//! [`check_modify`] decides what `ibv_modify_qp` would decide for an RC QP: the rule
//! of the kernel's `ib_modify_qp_is_ok()` (which every provider calls, rxe included),
//! with the table [`rc_transition`] transcribed from the kernel's `qp_state_table`, plus
//! rxe's rule that a draining SQD may only move to ERR. Nothing here names a verbs
//! type: the driver maps [`QpState`], [`AttrMask`] and [`QpAttributes`] onto
//! `ibv_qp_attr` (the numeric values are verbs' own).
//!
//! # Call order of [`QueuePair`]
//!
//! 1. [`QueuePair::new`]: the QP exists (the driver created it) and is in RESET.
//! 2. [`QueuePair::connect`] with what the peer sent for this QP: plans
//!    RESET → INIT → RTR → RTS.
//! 3. Take [`QueuePair::poll_modify`]; execute it (`ibv_modify_qp`); report the
//!    outcome with [`QueuePair::handle_modify_result`]; repeat until `poll_modify`
//!    gives `None`. One modify is outstanding at a time.
//! 4. Once [`QueuePair::can_post`], work requests may be posted.
//! 5. When the device moves the QP to ERR (an error completion, `IBV_EVENT_QP_FATAL`)
//!    call [`QueuePair::handle_device_error`]. [`QueuePair::reset`] plans the move back
//!    to RESET, after which `connect` may run again with fresh PSNs.

use bitflags::bitflags;

/// A queue pair's state, with verbs' numbering (`enum ibv_qp_state`) as discriminants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum QpState {
    /// Just created, or reset: no work is processed.
    Reset = 0,
    /// Initialised: receives may be posted, nothing is processed.
    Init = 1,
    /// Ready to receive.
    Rtr = 2,
    /// Ready to send: the only state in which sends are processed.
    Rts = 3,
    /// Send queue drained.
    Sqd = 4,
    /// Send queue error (not reached by an RC QP, whose send errors move it to ERR).
    Sqe = 5,
    /// Error: every outstanding and newly posted work request completes flushed.
    Err = 6,
}

impl QpState {
    /// Every state, in verbs' order (indexed by its code).
    pub const ALL: [QpState; 7] =
        [QpState::Reset, QpState::Init, QpState::Rtr, QpState::Rts, QpState::Sqd, QpState::Sqe, QpState::Err];

    /// The state's `ibv_qp_state` value.
    pub const fn verbs_code(self) -> u32 {
        self as u32
    }

    /// The state for an `ibv_qp_state` value (`None` for UNKNOWN and anything else).
    pub const fn from_verbs_code(code: u32) -> Option<Self> {
        if code < Self::ALL.len() as u32 { Some(Self::ALL[code as usize]) } else { None }
    }
}

bitflags! {
    /// Which attributes a modify call sets (`enum ibv_qp_attr_mask`, same bits).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct AttrMask: u32 {
        /// `qp_state`: the target state. Always allowed; without it the call is
        /// checked as a transition from the current state to itself.
        const STATE = 1 << 0;
        /// `cur_qp_state`: the state the caller believes the QP is in.
        const CUR_STATE = 1 << 1;
        /// `en_sqd_async_notify`.
        const EN_SQD_ASYNC_NOTIFY = 1 << 2;
        /// `qp_access_flags`: what remote peers may do through this QP.
        const ACCESS_FLAGS = 1 << 3;
        /// `pkey_index`.
        const PKEY_INDEX = 1 << 4;
        /// `port_num`.
        const PORT = 1 << 5;
        /// `qkey` (UD only).
        const QKEY = 1 << 6;
        /// `ah_attr`: the address vector of the peer.
        const AV = 1 << 7;
        /// `path_mtu`.
        const PATH_MTU = 1 << 8;
        /// `timeout`: the ACK timeout exponent.
        const TIMEOUT = 1 << 9;
        /// `retry_cnt`.
        const RETRY_CNT = 1 << 10;
        /// `rnr_retry`.
        const RNR_RETRY = 1 << 11;
        /// `rq_psn`: the first PSN expected from the peer.
        const RQ_PSN = 1 << 12;
        /// `max_rd_atomic`: outstanding reads/atomics as initiator.
        const MAX_QP_RD_ATOMIC = 1 << 13;
        /// `alt_ah_attr` and the other alternate-path fields.
        const ALT_PATH = 1 << 14;
        /// `min_rnr_timer`.
        const MIN_RNR_TIMER = 1 << 15;
        /// `sq_psn`: the first PSN this side sends.
        const SQ_PSN = 1 << 16;
        /// `max_dest_rd_atomic`: outstanding reads/atomics as responder.
        const MAX_DEST_RD_ATOMIC = 1 << 17;
        /// `path_mig_state`.
        const PATH_MIG_STATE = 1 << 18;
        /// `cap`.
        const CAP = 1 << 19;
        /// `dest_qp_num`: the peer's QP number.
        const DEST_QPN = 1 << 20;
        /// `rate_limit` (bits 21 to 24 are reserved).
        const RATE_LIMIT = 1 << 25;
    }
}

/// What a valid transition needs and allows, besides [`AttrMask::STATE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionRule {
    /// Attributes the call must set.
    pub required: AttrMask,
    /// Attributes the call may set.
    pub optional: AttrMask,
}

/// The kernel's `qp_state_table` for an RC QP: the rule of `from → to`, or `None` when
/// the pair is not a transition (RESET → ERR among them: the RESET row has only RESET
/// and INIT).
pub const fn rc_transition(from: QpState, to: QpState) -> Option<TransitionRule> {
    use QpState::*;
    const NONE: AttrMask = AttrMask::empty();
    const fn rule(required: AttrMask, optional: AttrMask) -> Option<TransitionRule> {
        Some(TransitionRule { required, optional })
    }
    const INIT_ARGS: AttrMask = AttrMask::PKEY_INDEX.union(AttrMask::PORT).union(AttrMask::ACCESS_FLAGS);
    const TO_RTS_OPTIONAL: AttrMask = AttrMask::CUR_STATE
        .union(AttrMask::ALT_PATH)
        .union(AttrMask::ACCESS_FLAGS)
        .union(AttrMask::MIN_RNR_TIMER)
        .union(AttrMask::PATH_MIG_STATE);
    match (from, to) {
        (Reset, Reset) => rule(NONE, NONE),
        (Reset, Init) => rule(INIT_ARGS, NONE),
        (Init, Init) => rule(NONE, INIT_ARGS),
        (Init, Rtr) => rule(
            AttrMask::AV
                .union(AttrMask::PATH_MTU)
                .union(AttrMask::DEST_QPN)
                .union(AttrMask::RQ_PSN)
                .union(AttrMask::MAX_DEST_RD_ATOMIC)
                .union(AttrMask::MIN_RNR_TIMER),
            AttrMask::ALT_PATH.union(AttrMask::ACCESS_FLAGS).union(AttrMask::PKEY_INDEX),
        ),
        (Rtr, Rts) => rule(
            AttrMask::TIMEOUT
                .union(AttrMask::RETRY_CNT)
                .union(AttrMask::RNR_RETRY)
                .union(AttrMask::SQ_PSN)
                .union(AttrMask::MAX_QP_RD_ATOMIC),
            TO_RTS_OPTIONAL,
        ),
        (Rts, Rts) | (Sqd, Rts) => rule(NONE, TO_RTS_OPTIONAL),
        (Rts, Sqd) => rule(NONE, AttrMask::EN_SQD_ASYNC_NOTIFY),
        (Sqd, Sqd) => rule(
            NONE,
            AttrMask::PORT
                .union(AttrMask::AV)
                .union(AttrMask::TIMEOUT)
                .union(AttrMask::RETRY_CNT)
                .union(AttrMask::RNR_RETRY)
                .union(AttrMask::MAX_QP_RD_ATOMIC)
                .union(AttrMask::MAX_DEST_RD_ATOMIC)
                .union(AttrMask::ALT_PATH)
                .union(AttrMask::ACCESS_FLAGS)
                .union(AttrMask::PKEY_INDEX)
                .union(AttrMask::MIN_RNR_TIMER)
                .union(AttrMask::PATH_MIG_STATE),
        ),
        // SQE → RTS is valid for every QP type; the RC entry lists no attribute.
        (Sqe, Rts) => rule(NONE, NONE),
        (Init | Rtr | Rts | Sqd | Sqe | Err, Reset) | (Init | Rtr | Rts | Sqd | Sqe | Err, Err) => {
            rule(NONE, NONE)
        }
        _ => None,
    }
}

/// Why a modify call is refused. A refused call changes nothing, not even the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModifyError {
    /// The pair is not in the RC table.
    #[error("{from:?} -> {to:?} is not a transition of an RC queue pair")]
    InvalidTransition {
        /// The state the call starts from.
        from: QpState,
        /// The state it asks for.
        to: QpState,
    },
    /// CUR_STATE names a state other than RTR, RTS, SQD or SQE.
    #[error("CUR_STATE may name RTR, RTS, SQD or SQE only, not {claimed:?}")]
    CurrentStateNotAllowed {
        /// The state the call claimed.
        claimed: QpState,
    },
    /// A required attribute is missing.
    #[error("{from:?} -> {to:?} needs the attributes {missing:?}")]
    MissingAttributes {
        /// The state the call starts from.
        from: QpState,
        /// The state it asks for.
        to: QpState,
        /// What it lacks.
        missing: AttrMask,
    },
    /// An attribute the transition does not take is set.
    #[error("{from:?} -> {to:?} does not take the attributes {extra:?}")]
    UnexpectedAttributes {
        /// The state the call starts from.
        from: QpState,
        /// The state it asks for.
        to: QpState,
        /// What it should not set.
        extra: AttrMask,
    },
    /// The send queue is draining in SQD: a call that sets a state may only set ERR
    /// (rxe's `rxe_qp_chk_attr`).
    #[error("while the send queue drains, only a move to ERR is allowed")]
    Draining,
}

/// A modify call as `ibv_modify_qp` sees it: the mask and the two state fields it
/// may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModifyCall {
    /// The attributes set.
    pub mask: AttrMask,
    /// `qp_state`, read when the mask has [`AttrMask::STATE`].
    pub target: QpState,
    /// `cur_qp_state`, read when the mask has [`AttrMask::CUR_STATE`].
    pub claimed_current: QpState,
}

/// Decides a modify call on an RC QP in state `actual` (with `sq_draining` as the
/// device reports it): the state the QP is in afterwards, or why the call is refused.
pub fn check_modify(actual: QpState, sq_draining: bool, call: ModifyCall) -> Result<QpState, ModifyError> {
    let from = if call.mask.contains(AttrMask::CUR_STATE) { call.claimed_current } else { actual };
    let to = if call.mask.contains(AttrMask::STATE) { call.target } else { from };
    if call.mask.contains(AttrMask::CUR_STATE)
        && !matches!(from, QpState::Rtr | QpState::Rts | QpState::Sqd | QpState::Sqe)
    {
        return Err(ModifyError::CurrentStateNotAllowed { claimed: from });
    }
    if call.mask.contains(AttrMask::STATE) && from == QpState::Sqd && sq_draining && to != QpState::Err {
        return Err(ModifyError::Draining);
    }
    // Without STATE the call is checked as cur -> cur but moves nothing.
    let after = if call.mask.contains(AttrMask::STATE) { to } else { actual };
    let rule = rc_transition(from, to).ok_or(ModifyError::InvalidTransition { from, to })?;
    let missing = rule.required.difference(call.mask);
    if !missing.is_empty() {
        return Err(ModifyError::MissingAttributes { from, to, missing });
    }
    let extra = call.mask.difference(rule.required | rule.optional | AttrMask::STATE);
    if !extra.is_empty() {
        return Err(ModifyError::UnexpectedAttributes { from, to, extra });
    }
    Ok(after)
}

/// A 24-bit packet sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Psn(u32);

impl Psn {
    /// The largest PSN.
    pub const MAX: u32 = (1 << 24) - 1;

    /// `value` as a PSN, or `None` if it needs more than 24 bits.
    pub const fn new(value: u32) -> Option<Self> {
        if value <= Self::MAX { Some(Self(value)) } else { None }
    }

    /// The low 24 bits of `value` (what the kernel keeps of a PSN it is given).
    pub const fn truncate(value: u32) -> Self {
        Self(value & Self::MAX)
    }

    /// The PSN's value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// A path MTU (`enum ibv_mtu`, its values as discriminants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256 = 1,
    /// 512 bytes.
    Mtu512 = 2,
    /// 1024 bytes.
    Mtu1024 = 3,
    /// 2048 bytes.
    Mtu2048 = 4,
    /// 4096 bytes.
    Mtu4096 = 5,
}

impl Mtu {
    const ALL: [Mtu; 5] = [Mtu::Mtu256, Mtu::Mtu512, Mtu::Mtu1024, Mtu::Mtu2048, Mtu::Mtu4096];

    /// The `ibv_mtu` value (1 to 5).
    pub const fn verbs_code(self) -> u8 {
        self as u8
    }

    /// The MTU of an `ibv_mtu` value.
    pub const fn from_verbs_code(code: u8) -> Option<Self> {
        if code >= 1 && code <= Self::ALL.len() as u8 { Some(Self::ALL[code as usize - 1]) } else { None }
    }

    /// The MTU in bytes.
    pub const fn bytes(self) -> u32 {
        128 << self.verbs_code()
    }
}

bitflags! {
    /// Access rights of a QP or a memory region (`enum ibv_access_flags`, same bits).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Access: u32 {
        /// The local side may write the memory (needed by both remote rights below).
        const LOCAL_WRITE = 1 << 0;
        /// Peers may RDMA WRITE it.
        const REMOTE_WRITE = 1 << 1;
        /// Peers may RDMA READ it.
        const REMOTE_READ = 1 << 2;
        /// Peers may run atomics on it.
        const REMOTE_ATOMIC = 1 << 3;
    }
}

/// How this side sets its QPs up (Mooncake's defaults in [`QpConfig::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpConfig {
    /// The device port (from 1).
    pub port: u8,
    /// The partition key index.
    pub pkey_index: u16,
    /// What peers may do through the QP.
    pub access: Access,
    /// The local GID index used as the source GID.
    pub sgid_index: u8,
    /// The GRH hop limit.
    pub hop_limit: u8,
    /// The ACK timeout exponent (4.096 µs · 2^timeout; 0 waits forever).
    pub timeout: u8,
    /// Transport retries (3 bits).
    pub retry_cnt: u8,
    /// RNR retries (3 bits; 7 retries forever).
    pub rnr_retry: u8,
    /// The RNR NAK timer code sent to a peer that finds no receive posted.
    pub min_rnr_timer: u8,
    /// Outstanding RDMA reads this side initiates.
    pub max_rd_atomic: u8,
    /// Outstanding RDMA reads this side answers.
    pub max_dest_rd_atomic: u8,
    /// The MTU this side's port runs (the smaller of the two ends is used).
    pub mtu: Mtu,
}

impl Default for QpConfig {
    /// Mooncake's: port 1, pkey 0, local write + remote read/write/atomic, timeout 14
    /// (about 67 ms), retry 7, rnr retry 7, min RNR timer 12, 16 reads each way, hop
    /// limit 16, MTU 4096.
    fn default() -> Self {
        Self {
            port: 1,
            pkey_index: 0,
            access: Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
            sgid_index: 0,
            hop_limit: 16,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 16,
            max_dest_rd_atomic: 16,
            mtu: Mtu::Mtu4096,
        }
    }
}

/// What the peer said about the QP this one connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteQp {
    /// The peer QP's number (24 bits).
    pub qpn: u32,
    /// The peer port's GID.
    pub gid: [u8; 16],
    /// The peer port's LID (0 on RoCE).
    pub lid: u16,
    /// The first PSN the peer sends (this side's `rq_psn`).
    pub psn: Psn,
    /// The peer port's MTU.
    pub mtu: Mtu,
}

/// The peer's address as a modify to RTR gives it (`ah_attr` with a GRH: RoCE needs
/// one, and InfiniBand accepts one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressVector {
    /// The destination GID.
    pub dgid: [u8; 16],
    /// The destination LID.
    pub dlid: u16,
    /// The source GID index.
    pub sgid_index: u8,
    /// The GRH hop limit.
    pub hop_limit: u8,
    /// The local port.
    pub port: u8,
}

/// The attribute values of a modify call; only those its mask names are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpAttributes {
    /// `qp_state`.
    pub state: QpState,
    /// `cur_qp_state` (read with [`AttrMask::CUR_STATE`], which this machine never sets).
    pub cur_state: QpState,
    /// `port_num`.
    pub port: u8,
    /// `pkey_index`.
    pub pkey_index: u16,
    /// `qp_access_flags`.
    pub access: Access,
    /// `ah_attr`.
    pub av: AddressVector,
    /// `path_mtu`.
    pub path_mtu: Mtu,
    /// `dest_qp_num`.
    pub dest_qpn: u32,
    /// `rq_psn`.
    pub rq_psn: Psn,
    /// `sq_psn`.
    pub sq_psn: Psn,
    /// `max_dest_rd_atomic`.
    pub max_dest_rd_atomic: u8,
    /// `min_rnr_timer`.
    pub min_rnr_timer: u8,
    /// `timeout`.
    pub timeout: u8,
    /// `retry_cnt`.
    pub retry_cnt: u8,
    /// `rnr_retry`.
    pub rnr_retry: u8,
    /// `max_rd_atomic`.
    pub max_rd_atomic: u8,
}

impl QpAttributes {
    fn to(state: QpState) -> Self {
        Self {
            state,
            cur_state: QpState::Reset,
            port: 0,
            pkey_index: 0,
            access: Access::empty(),
            av: AddressVector::default(),
            path_mtu: Mtu::Mtu256,
            dest_qpn: 0,
            rq_psn: Psn::default(),
            sq_psn: Psn::default(),
            max_dest_rd_atomic: 0,
            min_rnr_timer: 0,
            timeout: 0,
            retry_cnt: 0,
            rnr_retry: 0,
            max_rd_atomic: 0,
        }
    }
}

/// One `ibv_modify_qp` call for the driver to execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModifyRequest {
    /// The attributes set.
    pub mask: AttrMask,
    /// Their values.
    pub attrs: QpAttributes,
}

impl ModifyRequest {
    /// The call as [`check_modify`] sees it.
    pub fn call(&self) -> ModifyCall {
        ModifyCall { mask: self.mask, target: self.attrs.state, claimed_current: self.attrs.cur_state }
    }
}

/// Why the machine cannot do what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QpError {
    /// `connect` needs a QP in RESET with nothing planned.
    #[error("a queue pair connects from RESET only (it is in {0:?})")]
    NotReset(QpState),
    /// A modify result arrived with no modify outstanding.
    #[error("a modify result arrived with no modify outstanding")]
    NoModifyOutstanding,
    /// The driver's `ibv_modify_qp` failed (an errno): the QP is where it was and the
    /// plan is dropped.
    #[error("ibv_modify_qp to {to:?} failed with errno {errno}")]
    ModifyFailed {
        /// The state asked for.
        to: QpState,
        /// The driver's error number.
        errno: i32,
    },
    /// The peer's QP number needs more than 24 bits.
    #[error("QP number {0:#x} needs more than 24 bits")]
    BadQpNumber(u32),
}

/// The modify calls planned at most at once (RESET → INIT → RTR → RTS).
const MAX_PLAN: usize = 3;

/// One RC queue pair as the engine sees it: the state its driver confirmed, and the
/// modify calls still to run.
#[derive(Debug, Clone)]
pub struct QueuePair {
    config: QpConfig,
    state: QpState,
    plan: [Option<ModifyRequest>; MAX_PLAN],
    next: usize,
    outstanding: Option<ModifyRequest>,
}

impl QueuePair {
    /// A QP the driver has just created, in RESET.
    pub fn new(config: QpConfig) -> Self {
        Self { config, state: QpState::Reset, plan: [None; MAX_PLAN], next: 0, outstanding: None }
    }

    /// The state the driver last confirmed (or the device reported).
    pub fn state(&self) -> QpState {
        self.state
    }

    /// Whether work requests may be posted: in RTS with no modify pending.
    pub fn can_post(&self) -> bool {
        self.state == QpState::Rts && self.outstanding.is_none() && self.planned().is_none()
    }

    /// Plans RESET → INIT → RTR → RTS towards `remote`, sending from `local_psn`.
    pub fn connect(&mut self, remote: RemoteQp, local_psn: Psn) -> Result<(), QpError> {
        if self.state != QpState::Reset || self.outstanding.is_some() || self.planned().is_some() {
            return Err(QpError::NotReset(self.state));
        }
        if remote.qpn > Psn::MAX {
            return Err(QpError::BadQpNumber(remote.qpn));
        }
        let c = &self.config;
        let init = ModifyRequest {
            mask: AttrMask::STATE | AttrMask::PKEY_INDEX | AttrMask::PORT | AttrMask::ACCESS_FLAGS,
            attrs: QpAttributes {
                port: c.port,
                pkey_index: c.pkey_index,
                access: c.access,
                ..QpAttributes::to(QpState::Init)
            },
        };
        let rtr = ModifyRequest {
            mask: AttrMask::STATE
                | AttrMask::AV
                | AttrMask::PATH_MTU
                | AttrMask::DEST_QPN
                | AttrMask::RQ_PSN
                | AttrMask::MAX_DEST_RD_ATOMIC
                | AttrMask::MIN_RNR_TIMER,
            attrs: QpAttributes {
                av: AddressVector {
                    dgid: remote.gid,
                    dlid: remote.lid,
                    sgid_index: c.sgid_index,
                    hop_limit: c.hop_limit,
                    port: c.port,
                },
                path_mtu: c.mtu.min(remote.mtu),
                dest_qpn: remote.qpn,
                rq_psn: remote.psn,
                max_dest_rd_atomic: c.max_dest_rd_atomic,
                min_rnr_timer: c.min_rnr_timer,
                ..QpAttributes::to(QpState::Rtr)
            },
        };
        let rts = ModifyRequest {
            mask: AttrMask::STATE
                | AttrMask::TIMEOUT
                | AttrMask::RETRY_CNT
                | AttrMask::RNR_RETRY
                | AttrMask::SQ_PSN
                | AttrMask::MAX_QP_RD_ATOMIC,
            attrs: QpAttributes {
                timeout: c.timeout,
                retry_cnt: c.retry_cnt & 7,
                rnr_retry: c.rnr_retry & 7,
                sq_psn: local_psn,
                max_rd_atomic: c.max_rd_atomic,
                ..QpAttributes::to(QpState::Rts)
            },
        };
        self.plan = [Some(init), Some(rtr), Some(rts)];
        self.next = 0;
        Ok(())
    }

    /// Plans the move back to RESET (dropping every outstanding work request without
    /// completions: call it only once every posted request has completed, or the QP is
    /// in ERR and flushed). Does nothing in RESET.
    pub fn reset(&mut self) {
        self.plan = [None; MAX_PLAN];
        self.next = 0;
        if self.state != QpState::Reset {
            self.plan[0] =
                Some(ModifyRequest { mask: AttrMask::STATE, attrs: QpAttributes::to(QpState::Reset) });
        }
    }

    /// Plans the move to ERR, so that the device flushes every outstanding work request
    /// (the first step of a drain). Does nothing in RESET, where it is not a
    /// transition.
    pub fn fail(&mut self) {
        self.plan = [None; MAX_PLAN];
        self.next = 0;
        if !matches!(self.state, QpState::Reset | QpState::Err) {
            self.plan[0] =
                Some(ModifyRequest { mask: AttrMask::STATE, attrs: QpAttributes::to(QpState::Err) });
        }
    }

    /// The device moved the QP to ERR (an error completion or a fatal event). Any plan
    /// is dropped: the QP must be reset before it connects again.
    pub fn handle_device_error(&mut self) {
        self.state = QpState::Err;
        self.plan = [None; MAX_PLAN];
        self.next = 0;
    }

    /// The next modify call to execute, once the previous one's result has been
    /// handled. Every call given passes [`check_modify`] from the confirmed state.
    #[must_use]
    pub fn poll_modify(&mut self) -> Option<ModifyRequest> {
        if self.outstanding.is_some() {
            return None;
        }
        let request = self.planned()?;
        self.plan[self.next] = None;
        self.next += 1;
        debug_assert!(
            check_modify(self.state, false, request.call()).is_ok(),
            "{request:?} from {:?}",
            self.state
        );
        self.outstanding = Some(request);
        Some(request)
    }

    /// The result of the outstanding modify: `Ok` moves the QP to its target; an errno
    /// leaves it where it was and drops the rest of the plan.
    pub fn handle_modify_result(&mut self, result: Result<(), i32>) -> Result<QpState, QpError> {
        let request = self.outstanding.take().ok_or(QpError::NoModifyOutstanding)?;
        match result {
            Ok(()) => {
                // A device error that arrived meanwhile wins over a move it raced
                // with, except the moves that leave ERR behind on purpose.
                if self.state != QpState::Err || request.attrs.state == QpState::Reset {
                    self.state = request.attrs.state;
                }
                Ok(self.state)
            }
            Err(errno) => {
                self.plan = [None; MAX_PLAN];
                self.next = 0;
                Err(QpError::ModifyFailed { to: request.attrs.state, errno })
            }
        }
    }

    fn planned(&self) -> Option<ModifyRequest> {
        self.plan.get(self.next).copied().flatten()
    }
}
