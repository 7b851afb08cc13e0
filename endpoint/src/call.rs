//! Calls as an endpoint places, answers and hangs them up, and what happens during one, as
//! events. The Requests go through [`crate::client`], the media through [`crate::media`]; the
//! pushes are read as typed [`Push`]es, and each Request answering one is made from the push as
//! it was delivered.
//!
//! Placing a call: [`OutgoingCall::place`], then [`OutgoingCall::wait_for_answer`]. Taking one:
//! [`next_incoming`], then [`IncomingCall::accept`] or [`IncomingCall::reject`]. Either way an
//! answered call is a [`Call`]: its [`CallEvent`]s until [`CallEvent::Ended`], and
//! [`Call::hang_up`].

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context};
use switchyard_media::session::{CallStats, Gathered, MediaEvent, Peer};
use switchyard_protocol::capabilities::MediaKind;
use switchyard_protocol::dict::Dict;
use switchyard_protocol::invitation::{
    AcceptPush, CancelPush, CancelReason, InitiatePush, Push, RejectPush, RejectReason,
};
use tokio::time::{Instant, Interval};

use crate::client::{ClientError, EndpointClient, PushChannel};
use crate::media::{self, MediaCall, MediaOptions};

/// How long one wait on the push channel lasts; it is waited on again when nothing came.
const PUSH_WAIT: Duration = Duration::from_secs(3600);
/// How often a call's statistics are reported.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How long a hang-up waits for the media's last events: the BYE is answered within a round
/// trip, and a peer that is gone must not hold the hang-up up.
const HANG_UP_WAIT: Duration = Duration::from_secs(3);

/// A call this endpoint placed, ringing.
pub struct OutgoingCall<'a> {
    client: &'a EndpointClient,
    pushes: &'a mut PushChannel,
    session_id: String,
    rung: i64,
    gathered: Gathered,
    /// The provider whose relay the media's candidates use, if any.
    relay_provider: Option<String>,
    options: MediaOptions,
}

/// How the other side answered a call this endpoint placed.
pub enum Answer<'a> {
    Accepted(Box<Call<'a>>),
    Rejected(RejectPush),
    /// The call ended unanswered (timed out, cancelled).
    Ended(CancelPush),
}

impl<'a> OutgoingCall<'a> {
    /// Prepares the media and sends the Initiate to `peer_uri`. `pushes` is this endpoint's push
    /// channel, open already so that no answer is missed.
    pub async fn place(
        client: &'a EndpointClient,
        pushes: &'a mut PushChannel,
        peer_uri: &str,
        media: Vec<MediaKind>,
        options: MediaOptions,
    ) -> anyhow::Result<OutgoingCall<'a>> {
        // Refused before anything is sent: the media could not offer video anyway.
        if media.contains(&MediaKind::Video) && !client.identity.capabilities.video {
            bail!(
                "this endpoint registered as audio-only (--audio-only); it cannot place a video \
                 call"
            );
        }
        let session_id = uuid::Uuid::new_v4().to_string();
        let names: Vec<&str> = media.iter().map(|k| k.as_str()).collect();
        let (mut gathered, relay_provider) =
            media::prepare(client, client.primary_uri(), media.clone(), &options, None)
                .await
                .context("preparing the media port")?;
        // For a callee that is a SIP phone; a callee endpoint reads the rest of the blob.
        if let Err(e) = gathered.offer_sdp() {
            tracing::warn!(error = %e, "no SDP offer in the blob: a SIP phone cannot take the call");
        }
        let answer = client
            .initiate(&session_id, peer_uri, &gathered.blob().to_bytes(), &names)
            .await?;
        Ok(OutgoingCall {
            client,
            pushes,
            session_id,
            rung: answer.int("rung")?,
            gathered,
            relay_provider,
            options,
        })
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// How many devices ring.
    pub fn rung(&self) -> i64 {
        self.rung
    }

    /// Waits for the answer. When accepted, the media starts (and, if the answer names a relay
    /// the media does not use yet, allocates there and sends the Update) before the call is
    /// handed over; what came of it are the call's first events.
    pub async fn wait_for_answer(self) -> anyhow::Result<Answer<'a>> {
        loop {
            let Some(delivered) = self.pushes.next(PUSH_WAIT).await? else {
                continue;
            };
            let push = Push::from_dict(&delivered)?;
            if push.session_id().as_str() != self.session_id {
                continue;
            }
            match push {
                Push::Accept(accept) => {
                    return Ok(Answer::Accepted(Box::new(
                        self.answered(accept, &delivered).await?,
                    )))
                }
                Push::Reject(reject) => return Ok(Answer::Rejected(reject)),
                Push::Cancel(cancel) => return Ok(Answer::Ended(cancel)),
                Push::Initiate(_) | Push::Update(_) => {}
            }
        }
    }

    async fn answered(self, accept: AcceptPush, delivered: &Dict) -> anyhow::Result<Call<'a>> {
        let mut first_events = VecDeque::new();
        let answerer = media::peer(delivered);
        // A SIP phone runs its own ICE: no relay is added behind its back.
        let phone = matches!(answerer, Ok(Peer::Sdp(_)));
        let mut media_call = match answerer.and_then(|p| Ok(self.gathered.start(true, p)?)) {
            Ok(call) => Some(call),
            Err(e) => {
                first_events.push_back(CallEvent::Media(MediaEvent::Failed(format!("{e:#}"))));
                None
            }
        };
        if let Some(running) = media_call.as_mut().filter(|_| !phone) {
            let joined = media::join_call_relay(
                running,
                self.client,
                delivered,
                self.relay_provider.as_deref(),
                &self.options,
            )
            .await;
            match joined {
                Ok(Some(blob)) => {
                    self.client
                        .update(
                            &self.session_id,
                            &accept.self_uri,
                            &accept.peer_uri,
                            &accept.state,
                            &blob.to_bytes(),
                        )
                        .await?;
                    first_events.push_back(CallEvent::RelayAdded {
                        provider: accept.relay_provider.clone(),
                    });
                }
                Ok(None) => {}
                Err(e) => first_events.push_back(CallEvent::NoRelay(format!("{e:#}"))),
            }
        }
        Ok(Call {
            client: self.client,
            pushes: self.pushes,
            role: Role::Caller,
            session_id: self.session_id,
            self_uri: accept.self_uri,
            peer_uri: accept.peer_uri,
            state: accept.state,
            media: media_call,
            pending: first_events,
            phase: Phase::Talking,
            stats_tick: stats_tick(),
            video_mute: self.options.mute_video_after.map(VideoMute::after),
        })
    }
}

/// What an endpoint waiting for calls receives.
pub enum Incoming {
    /// A call rings this endpoint: accept or reject it.
    Call(IncomingCall),
    /// A call that rang here ended before this endpoint took it: cancelled, answered on another
    /// device, timed out.
    Ended(CancelPush),
    /// Any other push.
    Other(Push),
}

/// The next push for an endpoint waiting for calls.
pub async fn next_incoming(pushes: &mut PushChannel) -> anyhow::Result<Incoming> {
    loop {
        let Some(delivered) = pushes.next(PUSH_WAIT).await? else {
            continue;
        };
        return Ok(match Push::from_dict(&delivered)? {
            Push::Initiate(push) => Incoming::Call(IncomingCall { push, delivered }),
            Push::Cancel(push) => Incoming::Ended(push),
            other => Incoming::Other(other),
        });
    }
}

/// A call ringing this endpoint: its Initiate Push.
pub struct IncomingCall {
    push: InitiatePush,
    /// The push as delivered, which the Accept or Reject answers.
    delivered: Dict,
}

/// What came of accepting a call.
pub enum Accepted<'a> {
    Answered(Box<Call<'a>>),
    /// The caller is a SIP phone whose offer this endpoint's media cannot answer; the call was
    /// rejected `unsupported-media` with this text.
    Unsupported(String),
    /// The provider refused the Accept: answered on another device first, ended meanwhile.
    Refused(ClientError),
}

impl IncomingCall {
    /// Who calls, whether their provider vouches for them, what media they ask for.
    pub fn push(&self) -> &InitiatePush {
        &self.push
    }

    /// Turns the call down, with a text for the caller if given.
    pub async fn reject(
        &self,
        client: &EndpointClient,
        reason: RejectReason,
        text: Option<&str>,
    ) -> Result<(), ClientError> {
        client
            .reject(&self.delivered, reason.as_str(), text)
            .await
            .map(drop)
    }

    /// Prepares the media for the kinds the caller asked for and sends the Accept; the media
    /// starts once the provider took it. `pushes` is the channel the call came on.
    pub async fn accept<'a>(
        self,
        client: &'a EndpointClient,
        pushes: &'a mut PushChannel,
        options: &MediaOptions,
    ) -> anyhow::Result<Accepted<'a>> {
        let (mut gathered, _) = media::prepare(
            client,
            &self.push.self_uri,
            self.push.media.clone(),
            options,
            Some(&self.push.relay_provider),
        )
        .await
        .context("preparing the media port")?;
        let caller = media::peer(&self.delivered);
        if let Ok(Peer::Sdp(offer)) = &caller {
            if let Err(e) = gathered.answer_sdp(offer) {
                let why = format!("{e:#}");
                self.reject(client, RejectReason::UnsupportedMedia, Some(&why))
                    .await?;
                return Ok(Accepted::Unsupported(why));
            }
        }
        if let Err(e) = client
            .accept(&self.delivered, &gathered.blob().to_bytes())
            .await
        {
            return Ok(Accepted::Refused(e));
        }
        let mut first_events = VecDeque::new();
        let media_call = match caller.and_then(|p| Ok(gathered.start(false, p)?)) {
            Ok(call) => Some(call),
            Err(e) => {
                first_events.push_back(CallEvent::Media(MediaEvent::Failed(format!("{e:#}"))));
                None
            }
        };
        let push = self.push;
        Ok(Accepted::Answered(Box::new(Call {
            client,
            pushes,
            role: Role::Callee,
            session_id: push.session_id.to_string(),
            self_uri: push.self_uri,
            peer_uri: push.peer_uri,
            // The Accept's answer holds the same token.
            state: push.state,
            media: media_call,
            pending: first_events,
            phase: Phase::Talking,
            stats_tick: stats_tick(),
            video_mute: None,
        })))
    }
}

/// What happens during an answered call, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// From the media session; a media that could not start is a `Failed` one.
    Media(MediaEvent),
    /// The answer named a relay the media did not use yet: allocated there, and the Update sent
    /// to the other side.
    RelayAdded {
        provider: String,
    },
    /// The relay the answer named could not be used.
    NoRelay(String),
    /// The other side's Update applied: this many new candidates.
    PeerUpdated {
        candidates: usize,
    },
    PeerUpdateRefused(String),
    /// Every second, while there is media.
    Stats(CallStats),
    /// Video muted (true) or unmuted by [`MediaOptions::mute_video_after`].
    VideoMuted(bool),
    /// The last event of the call.
    Ended(CallEnd),
}

/// How an answered call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEnd {
    /// The provider's Cancel Push: the other side hung up, or the call ended otherwise.
    Cancelled(CancelReason),
    /// The caller's media heard the other side hang up (its BYE) before any Cancel Push; the
    /// callee waits for the provider's.
    RemoteHangUp,
    /// This side hung up ([`Call::hang_up`]) and the provider took the Cancel.
    HungUp,
}

impl CallEnd {
    /// The reason a Cancel Push gives for it: a hang-up ends a call as `ended`.
    pub fn reason(&self) -> CancelReason {
        match self {
            CallEnd::Cancelled(reason) => *reason,
            CallEnd::RemoteHangUp | CallEnd::HungUp => CancelReason::Ended,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Caller,
    Callee,
}

enum Phase {
    Talking,
    /// The media said goodbye; its last events are reported until `until`, then the Cancel goes.
    HangingUp {
        until: Instant,
        media_over: bool,
    },
    Over,
}

/// An answered call, either side.
pub struct Call<'a> {
    client: &'a EndpointClient,
    pushes: &'a mut PushChannel,
    role: Role,
    session_id: String,
    self_uri: String,
    peer_uri: String,
    /// The latest state token, for the Cancel of a hang-up.
    state: String,
    /// None when the media could not start: the call goes on without it.
    media: Option<MediaCall>,
    /// Events already known, reported before anything new.
    pending: VecDeque<CallEvent>,
    phase: Phase,
    stats_tick: Interval,
    video_mute: Option<VideoMute>,
}

impl Call<'_> {
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The other side's URI.
    pub fn peer_uri(&self) -> &str {
        &self.peer_uri
    }

    /// The next thing that happens; after [`CallEvent::Ended`], an error. It may be raced against
    /// other futures (`select!`), as the command line does with its hang-up timer.
    pub async fn next_event(&mut self) -> anyhow::Result<CallEvent> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(event);
        }
        match self.phase {
            Phase::Talking => self.talking().await,
            Phase::HangingUp { until, media_over } => self.hanging_up(until, media_over).await,
            Phase::Over => bail!("call {} is over", self.session_id),
        }
    }

    /// Hangs up: the media says goodbye to the other side, [`Call::next_event`] reports its last
    /// events, then sends the Cancel and reports [`CallEnd::HungUp`]. Nothing once the call has
    /// ended or is hanging up already.
    pub fn hang_up(&mut self) {
        if !matches!(self.phase, Phase::Talking) {
            return;
        }
        if let Some(media) = &self.media {
            media.hang_up();
        }
        self.phase = Phase::HangingUp {
            until: Instant::now() + HANG_UP_WAIT,
            media_over: self.media.is_none(),
        };
    }

    /// Releases the media; returns its last statistics (None for a call without media).
    pub async fn close(self) -> Option<CallStats> {
        let media = self.media?;
        let stats = media.stats();
        media.close().await;
        Some(stats)
    }

    async fn talking(&mut self) -> anyhow::Result<CallEvent> {
        loop {
            tokio::select! {
                push = self.pushes.next(PUSH_WAIT) => {
                    let Some(delivered) = push? else {
                        continue;
                    };
                    match Push::from_dict(&delivered)? {
                        Push::Cancel(cancel) if cancel.session_id.as_str() == self.session_id => {
                            return Ok(self.end(CallEnd::Cancelled(cancel.reason)));
                        }
                        Push::Update(update) if update.session_id.as_str() == self.session_id => {
                            if let Some(event) = self.apply_update(&delivered) {
                                return Ok(event);
                            }
                        }
                        // Another call's, or nothing an answered call acts on.
                        _ => {}
                    }
                }
                event = next_media_event(&mut self.media) => {
                    if let (Some(mute), MediaEvent::Negotiated { .. }) = (&mut self.video_mute, &event) {
                        mute.negotiated_at = Some(Instant::now());
                    }
                    if self.role == Role::Caller && event == MediaEvent::RemoteHangUp {
                        let end = self.end(CallEnd::RemoteHangUp);
                        self.pending.push_back(end);
                    }
                    return Ok(CallEvent::Media(event));
                }
                _ = self.stats_tick.tick() => {
                    if let Some(media) = &self.media {
                        let stats = media.stats();
                        if let Some(muted) = self.video_mute.as_mut().and_then(VideoMute::due) {
                            media.set_video_muted(muted);
                            self.pending.push_back(CallEvent::VideoMuted(muted));
                        }
                        return Ok(CallEvent::Stats(stats));
                    }
                }
            }
        }
    }

    async fn hanging_up(&mut self, until: Instant, media_over: bool) -> anyhow::Result<CallEvent> {
        if let Some(media) = self.media.as_mut().filter(|_| !media_over) {
            if let Ok(Some(event)) = tokio::time::timeout_at(until, media.next_event()).await {
                let media_over = matches!(
                    event,
                    MediaEvent::RemoteHangUp | MediaEvent::Ended | MediaEvent::Failed(_)
                );
                self.phase = Phase::HangingUp { until, media_over };
                return Ok(CallEvent::Media(event));
            }
        }
        self.client
            .cancel(
                &self.session_id,
                &self.self_uri,
                &self.peer_uri,
                &self.state,
            )
            .await?;
        Ok(self.end(CallEnd::HungUp))
    }

    /// The other side's Update applied to the media; None without media.
    fn apply_update(&mut self, delivered: &Dict) -> Option<CallEvent> {
        let media = self.media.as_mut()?;
        Some(match media::apply_update(media, delivered) {
            Ok(candidates) => CallEvent::PeerUpdated { candidates },
            Err(e) => CallEvent::PeerUpdateRefused(format!("{e:#}")),
        })
    }

    fn end(&mut self, end: CallEnd) -> CallEvent {
        self.phase = Phase::Over;
        CallEvent::Ended(end)
    }
}

/// The first report a second after the call begins.
fn stats_tick() -> Interval {
    tokio::time::interval_at(Instant::now() + STATS_EVERY, STATS_EVERY)
}

/// The next media event, or never when there is no media (or its events are over).
async fn next_media_event(media: &mut Option<MediaCall>) -> MediaEvent {
    match media.as_mut() {
        Some(media) => match media.next_event().await {
            Some(event) => event,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// [`MediaOptions::mute_video_after`]: video muted that many seconds after the media is
/// negotiated, and unmuted as many seconds later.
struct VideoMute {
    after: u64,
    negotiated_at: Option<Instant>,
    muted: bool,
}

impl VideoMute {
    fn after(seconds: u64) -> VideoMute {
        VideoMute {
            after: seconds,
            negotiated_at: None,
            muted: false,
        }
    }

    /// Whether video is to be muted (true) or unmuted (false) now.
    fn due(&mut self) -> Option<bool> {
        let elapsed = self.negotiated_at?.elapsed().as_secs();
        if !self.muted && elapsed >= self.after && elapsed < 2 * self.after {
            self.muted = true;
            Some(true)
        } else if self.muted && elapsed >= 2 * self.after {
            self.muted = false;
            Some(false)
        } else {
            None
        }
    }
}
