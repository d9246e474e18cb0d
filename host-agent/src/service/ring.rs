//! The ring adapter: the service as the pollers' [`Handler`], and how its
//! answers are written on the wire.

use vmdedup_protocol::abi::AnswerStatus;
use vmdedup_protocol::control::MissReason;

use super::{HintResult, HintService};
use crate::ring::handler::{Answer, Handler, Hint, RingId};

impl Handler for HintService {
    fn handle(&self, ring: RingId, hint: &Hint<'_>) -> Answer {
        match self.answer_noting(ring.0, hint) {
            (HintResult::Hit(r), _) => Answer::Hit(r),
            (HintResult::Miss(_), true) => Answer::LoadingNotice,
            (HintResult::Miss(m), false) => Answer::Miss(answer_status(m)),
        }
    }

    fn ack_revoke(&self, ring: RingId, file_map_id: u64) {
        if !self.ack(ring.0, file_map_id) {
            tracing::debug!(
                vm = ring.0,
                map = file_map_id,
                "acknowledgement for a map that was not being revoked"
            );
        }
    }

    fn release(&self, ring: RingId, file_map_id: u64) {
        HintService::release(self, ring.0, file_map_id);
    }

    fn cut_off_acknowledged(&self, ring: RingId) {
        HintService::cut_off_acknowledged(self, ring.0);
    }

    fn reconnected(&self, ring: RingId) {
        HintService::vm_reconnected(self, ring.0);
    }

    fn hold(&self, ring: RingId, file_map_id: u64) {
        self.with_store(|s| s.reannounced(ring.0, file_map_id));
    }

    fn holds_done(&self, ring: RingId, token: u64) {
        HintService::holds_done(self, ring.0, token);
    }
}

impl HintService {
    /// VM `vm` re-announced every map it holds after the agent took the pool
    /// over (`token` 0: it started over on a re-initialised ring, or never
    /// had a ring). Returns whether it was awaited.
    pub fn holds_done(&self, vm: crate::store::VmId, token: u64) -> bool {
        let was = self.with_store(|s| s.holds_done(vm, token));
        if was {
            tracing::info!(vm, token, "VM re-announced its maps");
        }
        was
    }
}

/// The ring status a miss is reported with.
pub fn answer_status(m: MissReason) -> AnswerStatus {
    match m {
        MissReason::IdentityMismatch => AnswerStatus::IdentityMismatch,
        MissReason::NotFound | MissReason::NotRegular => AnswerStatus::NotFound,
        MissReason::BadPath => AnswerStatus::BadRequest,
        MissReason::NoNamespace => AnswerStatus::NamespaceNotAllowed,
        // Both mean "ask again later" to the guest; so does a full quota
        // (a hit fits again once the VM released something).
        MissReason::Loading | MissReason::PoolFull | MissReason::OverQuota => AnswerStatus::Loading,
        MissReason::TooLarge => AnswerStatus::TooLarge,
        MissReason::CutOff | MissReason::IoError => AnswerStatus::HostError,
    }
}
