//! Work completion statuses (`enum ibv_wc_status`) and what each means for a transfer.

/// A work completion's status, with verbs' numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WcStatus {
    /// The work request completed.
    Success,
    /// Local length error.
    LocLenErr,
    /// Local QP operation error.
    LocQpOpErr,
    /// Local EE context operation error.
    LocEecOpErr,
    /// Local protection error (a local key or bound).
    LocProtErr,
    /// Flushed: the QP was in ERR, the request was not executed (or its result is
    /// unknown).
    WrFlushErr,
    /// Memory window bind error.
    MwBindErr,
    /// Bad response.
    BadRespErr,
    /// Local access error.
    LocAccessErr,
    /// Remote invalid request.
    RemInvReqErr,
    /// Remote access error (rkey, bounds or rights at the responder).
    RemAccessErr,
    /// Remote operation error.
    RemOpErr,
    /// Transport retry counter exceeded (no ACK).
    RetryExcErr,
    /// RNR retry counter exceeded.
    RnrRetryExcErr,
    /// Local RDD violation.
    LocRddViolErr,
    /// Remote invalid RD request.
    RemInvRdReqErr,
    /// Remote aborted.
    RemAbortErr,
    /// Invalid EE context number.
    InvEecnErr,
    /// Invalid EE context state.
    InvEecStateErr,
    /// Fatal error.
    FatalErr,
    /// Response timeout.
    RespTimeoutErr,
    /// General error.
    GeneralErr,
    /// A value this build does not know.
    Unknown(u32),
}

/// What a completion status means for the work request's slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// Done.
    Success,
    /// Not executed (or not known to be): send it again, on any QP.
    Flushed,
    /// The path or the peer failed: the QP is in ERR; send it again on another QP.
    Transient,
    /// A key, bound or right was refused: sending it again fails again, so the transfer
    /// fails.
    Refused,
}

impl WcStatus {
    const BY_CODE: [WcStatus; 22] = [
        WcStatus::Success,
        WcStatus::LocLenErr,
        WcStatus::LocQpOpErr,
        WcStatus::LocEecOpErr,
        WcStatus::LocProtErr,
        WcStatus::WrFlushErr,
        WcStatus::MwBindErr,
        WcStatus::BadRespErr,
        WcStatus::LocAccessErr,
        WcStatus::RemInvReqErr,
        WcStatus::RemAccessErr,
        WcStatus::RemOpErr,
        WcStatus::RetryExcErr,
        WcStatus::RnrRetryExcErr,
        WcStatus::LocRddViolErr,
        WcStatus::RemInvRdReqErr,
        WcStatus::RemAbortErr,
        WcStatus::InvEecnErr,
        WcStatus::InvEecStateErr,
        WcStatus::FatalErr,
        WcStatus::RespTimeoutErr,
        WcStatus::GeneralErr,
    ];

    /// The status of an `ibv_wc_status` value.
    pub fn from_verbs_code(code: u32) -> Self {
        Self::BY_CODE.get(code as usize).copied().unwrap_or(WcStatus::Unknown(code))
    }

    /// The `ibv_wc_status` value.
    pub fn verbs_code(self) -> u32 {
        match self {
            WcStatus::Unknown(code) => code,
            known => Self::BY_CODE.iter().position(|s| *s == known).unwrap_or(0) as u32,
        }
    }

    /// What the status means for the slice.
    pub fn class(self) -> StatusClass {
        match self {
            WcStatus::Success => StatusClass::Success,
            WcStatus::WrFlushErr => StatusClass::Flushed,
            WcStatus::LocLenErr
            | WcStatus::LocProtErr
            | WcStatus::LocAccessErr
            | WcStatus::MwBindErr
            | WcStatus::RemInvReqErr
            | WcStatus::RemAccessErr
            | WcStatus::RemInvRdReqErr => StatusClass::Refused,
            _ => StatusClass::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_verbs_own_and_unknown_ones_survive() {
        for code in 0..22 {
            assert_eq!(WcStatus::from_verbs_code(code).verbs_code(), code);
        }
        assert_eq!(WcStatus::from_verbs_code(5), WcStatus::WrFlushErr);
        assert_eq!(WcStatus::from_verbs_code(10), WcStatus::RemAccessErr);
        assert_eq!(WcStatus::from_verbs_code(12), WcStatus::RetryExcErr);
        assert_eq!(WcStatus::from_verbs_code(13), WcStatus::RnrRetryExcErr);
        assert_eq!(WcStatus::from_verbs_code(99), WcStatus::Unknown(99));
        assert_eq!(WcStatus::Unknown(99).verbs_code(), 99);
    }

    #[test]
    fn access_errors_fail_and_path_errors_retry() {
        assert_eq!(WcStatus::RemAccessErr.class(), StatusClass::Refused);
        assert_eq!(WcStatus::LocProtErr.class(), StatusClass::Refused);
        assert_eq!(WcStatus::RetryExcErr.class(), StatusClass::Transient);
        assert_eq!(WcStatus::RnrRetryExcErr.class(), StatusClass::Transient);
        assert_eq!(WcStatus::GeneralErr.class(), StatusClass::Transient);
        assert_eq!(WcStatus::WrFlushErr.class(), StatusClass::Flushed);
        assert_eq!(WcStatus::Unknown(40).class(), StatusClass::Transient);
    }
}
