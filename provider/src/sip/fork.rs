//! The INVITE of a called phone's leg, forked to every registered contact of the account: one
//! [`Branch`] per contact, each a client transaction of its own. The fork only keeps count; the
//! leg sends what it says to.

use super::message::InboundResponse;
use super::outbound::{Flow, OutRequest};
use super::status::best_failure;

/// One INVITE fork towards a contact of the called phone.
struct Branch {
    tx: u32,
    flow: Flow,
    request: OutRequest,
    provisional: bool,
    cancel_when_provisional: bool,
    final_status: Option<u16>,
}

#[derive(Default)]
pub struct Fork {
    branches: Vec<Branch>,
}

impl Fork {
    /// The INVITE `request` to `flow`, sent as client transaction `tx`.
    pub fn add(&mut self, tx: u32, flow: Flow, request: OutRequest) {
        self.branches.push(Branch {
            tx,
            flow,
            request,
            provisional: false,
            cancel_when_provisional: false,
            final_status: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.branches.is_empty()
    }

    pub fn first_flow(&self) -> Option<Flow> {
        self.branches.first().map(|b| b.flow)
    }

    /// Whether transaction `tx` is one of the fork's INVITEs.
    pub fn has(&self, tx: u32) -> bool {
        self.branches.iter().any(|b| b.tx == tx)
    }

    /// Whether every branch has its final response (or timed out).
    pub fn settled(&self) -> bool {
        self.branches.iter().all(|b| b.final_status.is_some())
    }

    /// The CANCELs to send now to the branches still ringing; those with no provisional
    /// response yet are cancelled once they have one (RFC 3261 §9.1: no CANCEL before it).
    pub fn cancel_pending(&mut self) -> Vec<(Flow, OutRequest)> {
        let mut cancels = Vec::new();
        for branch in &mut self.branches {
            if branch.final_status.is_some() {
                continue;
            }
            if branch.provisional {
                cancels.push((branch.flow, branch.request.cancel()));
            } else {
                branch.cancel_when_provisional = true;
            }
        }
        cancels
    }

    /// Branch `tx` got a provisional response: the CANCEL to send now, if it waited for one.
    pub fn provisional(&mut self, tx: u32) -> Option<(Flow, OutRequest)> {
        let branch = self.branches.iter_mut().find(|b| b.tx == tx)?;
        if branch.provisional {
            return None;
        }
        branch.provisional = true;
        branch
            .cancel_when_provisional
            .then(|| (branch.flow, branch.request.cancel()))
    }

    /// Branch `tx` failed with `response` (3xx-6xx): the ACK to send it, and whether this was
    /// its first final response.
    pub fn failed(
        &mut self,
        tx: u32,
        response: &InboundResponse,
    ) -> Option<(Flow, OutRequest, bool)> {
        let branch = self.branches.iter_mut().find(|b| b.tx == tx)?;
        let ack = branch.request.ack_of_failure(response);
        let first = branch.final_status.is_none();
        if first {
            branch.final_status = Some(response.status);
        }
        Some((branch.flow, ack, first))
    }

    /// Branch `tx` answered with `status` (a 2xx): its INVITE and flow, and whether it had
    /// answered before (a retransmitted 2xx).
    pub fn answered(&mut self, tx: u32, status: u16) -> Option<(OutRequest, Flow, bool)> {
        let branch = self.branches.iter_mut().find(|b| b.tx == tx)?;
        let retransmitted = branch.final_status.is_some();
        branch.final_status = Some(status);
        Some((branch.request.clone(), branch.flow, retransmitted))
    }

    /// Branch `tx` timed out (Timer B): whether it was one of the fork's.
    pub fn timed_out(&mut self, tx: u32) -> bool {
        match self.branches.iter_mut().find(|b| b.tx == tx) {
            Some(branch) => {
                branch.final_status = Some(408);
                true
            }
            None => false,
        }
    }

    /// Once every branch has failed: the status to report for the call (see [`best_failure`]).
    pub fn failure(&self) -> Option<u16> {
        let statuses: Vec<u16> = self
            .branches
            .iter()
            .map(|b| b.final_status)
            .collect::<Option<Vec<u16>>>()
            .unwrap_or_default();
        (!statuses.is_empty()).then(|| best_failure(&statuses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{self, Transport};
    use crate::sip::outbound::new_branch;

    fn invite(contact: &str) -> OutRequest {
        OutRequest {
            method: rsip::Method::Invite,
            uri: contact.into(),
            via: "SIP/2.0/UDP 192.0.2.1:5060".into(),
            branch: new_branch(),
            from: "<sip:alice@a.test>;tag=a".into(),
            to: "<sip:bob@a.test>".into(),
            call_id: "c@a.test".into(),
            cseq: 1,
            route: vec![],
            contact: None,
            sdp: None,
        }
    }

    fn flow(port: u16) -> Flow {
        Flow {
            transport: Transport::Udp,
            addr: ([192, 0, 2, 9], port).into(),
        }
    }

    fn response(status: u16) -> InboundResponse {
        InboundResponse {
            status,
            fields: message::Fields::default(),
            body: vec![],
            source: ([192, 0, 2, 9], 5062).into(),
            transport: Transport::Udp,
        }
    }

    #[test]
    fn a_fork_cancels_each_branch_once_it_may_and_reports_the_best_failure() {
        let mut fork = Fork::default();
        fork.add(1, flow(5062), invite("sip:bob@192.0.2.9:5062"));
        fork.add(2, flow(5064), invite("sip:bob@192.0.2.9:5064"));
        assert!(fork.has(2) && !fork.has(3));
        assert_eq!(fork.provisional(1).map(|(f, _)| f), None);
        // Branch 1 rang: cancelled now; branch 2 did not yet: cancelled once it does.
        let cancels = fork.cancel_pending();
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels[0].0, flow(5062));
        assert_eq!(cancels[0].1.method, rsip::Method::Cancel);
        let (to, cancel) = fork.provisional(2).expect("a CANCEL once it rang");
        assert_eq!((to, cancel.method), (flow(5064), rsip::Method::Cancel));
        assert!(fork.provisional(2).is_none(), "once");
        assert!(!fork.settled());
        assert_eq!(fork.failure(), None);
        let (_, ack, first) = fork.failed(1, &response(487)).unwrap();
        assert!(first);
        assert_eq!(ack.method, rsip::Method::Ack);
        assert!(
            !fork.failed(1, &response(487)).unwrap().2,
            "a retransmission"
        );
        assert!(fork.timed_out(2));
        assert!(fork.settled());
        assert_eq!(fork.failure(), Some(487));
    }

    #[test]
    fn an_answered_branch_is_told_from_its_retransmission() {
        let mut fork = Fork::default();
        assert!(fork.settled() && fork.failure().is_none());
        fork.add(1, flow(5062), invite("sip:bob@192.0.2.9:5062"));
        assert!(!fork.answered(1, 200).unwrap().2);
        assert!(fork.answered(1, 200).unwrap().2);
        assert!(fork.answered(2, 200).is_none());
    }
}
