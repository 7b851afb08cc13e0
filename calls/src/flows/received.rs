//! A Forward as it arrives: read from its dictionary with the sender's provider field checked
//! against the authenticated peer, then handed to the originator's or the answerer's flow. The
//! daemon's federation routes and the in-memory harness both receive Forwards through here.

use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptForward, CancelForward, ForwardAction, InitiateForward, RejectForward, UpdateForward,
};
use switchyard_protocol::uri::Canonicalizer;

use super::{CallResult, Core, Deferred};
use crate::ports::{Ports, Sender};

impl<P: Ports> Core<P> {
    /// Receives `action`'s Forward from `sender`; URIs are canonicalized with `canon`, this
    /// provider's rules. What it defers (Cancels to the losers of a race) is for the caller to
    /// run after answering.
    pub async fn receive_forward(
        &self,
        sender: &Sender,
        action: ForwardAction,
        body: &Dict,
        canon: &Canonicalizer,
    ) -> (CallResult<Dict>, Option<Deferred>) {
        let from = sender.provider_id.as_str();
        let answer = match action {
            ForwardAction::Initiate => match InitiateForward::from_dict(body, canon, from) {
                Ok(forward) => self.receive_initiate(sender, forward).await,
                Err(e) => Err(e.into()),
            },
            ForwardAction::Accept => {
                return match AcceptForward::from_dict(body, canon, from) {
                    Ok(forward) => match self.receive_accept(sender, forward).await {
                        Ok((answer, deferred)) => (Ok(answer), deferred),
                        Err(e) => (Err(e), None),
                    },
                    Err(e) => (Err(e.into()), None),
                }
            }
            ForwardAction::Reject => match RejectForward::from_dict(body, from) {
                Ok(forward) => self.receive_reject(sender, forward).await,
                Err(e) => Err(e.into()),
            },
            ForwardAction::Cancel => match CancelForward::from_dict(body, from) {
                Ok(forward) => self.receive_cancel(sender, forward).await,
                Err(e) => Err(e.into()),
            },
            ForwardAction::Update => match UpdateForward::from_dict(body, from) {
                Ok(forward) => self.receive_update(sender, forward).await,
                Err(e) => Err(e.into()),
            },
        };
        (answer, None)
    }
}
