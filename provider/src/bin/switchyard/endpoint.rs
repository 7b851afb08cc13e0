//! `switchyard endpoint …`: a command line over the endpoint crate (register, call, answer).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};
use switchyard_endpoint::call::{
    self, Accepted, Answer, Call, CallEnd, CallEvent, Incoming, IncomingCall, OutgoingCall,
};
use switchyard_endpoint::client::{self, EndpointClient, EndpointIdentity, PushChannel, PushMode};
use switchyard_endpoint::http_relay::TunnelMode;
use switchyard_endpoint::media::MediaOptions;
use switchyard_media::session::{CallStats, MediaEvent, StreamStats};
use switchyard_protocol::attestation::Level;
use switchyard_protocol::capabilities::{Capabilities, MediaKind};
use switchyard_protocol::dict::Encoding;
use switchyard_protocol::invitation::RejectReason;

#[derive(Args)]
pub struct EndpointArgs {
    /// Folder holding this endpoint's identity (key, certificate, push token).
    #[arg(long)]
    state: PathBuf,
    /// Use JSON instead of XML property lists.
    #[arg(long)]
    json: bool,
    /// How pushes arrive.
    #[arg(long, value_enum, default_value = "web-socket")]
    push: PushMode,
}

impl EndpointArgs {
    /// A client of the provider as the endpoint whose identity `--state` holds.
    fn client(&self) -> anyhow::Result<EndpointClient> {
        Ok(EndpointClient::new(
            EndpointIdentity::load(&self.state)?,
            encoding(self.json),
        )?)
    }
}

#[derive(Args)]
pub struct MediaArgs {
    /// The address of this device's media port (one UDP port for STUN, DTLS, SIP and SRTP).
    #[arg(long, default_value = "127.0.0.1")]
    media_address: std::net::IpAddr,
    /// Offer only the provider's relay as a path (no direct one).
    #[arg(long)]
    relay_only: bool,
    /// Mute video this many seconds into the call, and unmute as many seconds later.
    #[arg(long)]
    mute_video_after: Option<u64>,
    /// For a network that lets no UDP out: media only through the provider's HTTP relay.
    #[arg(long, value_enum)]
    http_relay: Option<TunnelMode>,
}

impl MediaArgs {
    fn options(&self) -> MediaOptions {
        MediaOptions {
            address: self.media_address,
            relay_only: self.relay_only,
            mute_video_after: self.mute_video_after,
            http_relay: self.http_relay,
        }
    }
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Register this device with a provisioning code.
    Register {
        #[arg(long)]
        provider: String,
        /// The provider's endpoint CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        uri: String,
        /// The one-time provisioning code (it may begin with `-`).
        #[arg(long, allow_hyphen_values = true)]
        code: String,
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value = "switchyard-cli")]
        name: String,
        /// Register as an audio-only device.
        #[arg(long)]
        audio_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// Call a URI and wait for the answer.
    Call {
        uri: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
        /// Ask for video as well as audio.
        #[arg(long)]
        video: bool,
        /// Hang up this many seconds after the call is answered (default: on Ctrl-C).
        #[arg(long)]
        hangup_after: Option<u64>,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Wait for calls and answer them.
    Answer {
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[arg(long, conflicts_with = "auto_reject")]
        auto_accept: bool,
        /// Reject every call with this reason.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(RejectReason::ALL.iter().map(|r| r.as_str()))
            .try_map(|reason| RejectReason::parse(&reason).ok_or("not a reject reason")))]
        auto_reject: Option<RejectReason>,
        /// Exit after the first call ends.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        media: MediaArgs,
    },
}

fn encoding(json: bool) -> Encoding {
    if json {
        Encoding::Json
    } else {
        Encoding::Plist
    }
}

pub async fn endpoint(command: EndpointCommand) -> anyhow::Result<ExitCode> {
    match command {
        EndpointCommand::Register {
            provider,
            ca,
            uri,
            code,
            state,
            name,
            audio_only,
            json,
        } => {
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading {}", ca.display()))?;
            let capabilities = audio_only.then(|| Capabilities {
                video: false,
                ..Capabilities::default()
            });
            let identity = client::register(
                &provider,
                &ca_pem,
                &uri,
                &code,
                &name,
                capabilities,
                encoding(json),
            )
            .await?;
            identity.save(&state)?;
            println!(
                "registered endpoint {} for {}",
                identity.endpoint_id,
                identity.uris.join(", ")
            );
            println!("identity saved in {}", state.display());
            Ok(ExitCode::SUCCESS)
        }
        EndpointCommand::Call {
            uri,
            endpoint,
            video,
            hangup_after,
            media,
        } => {
            let client = endpoint.client()?;
            let mut pushes = client.push_channel(endpoint.push).await?;
            let kinds = if video {
                vec![MediaKind::Audio, MediaKind::Video]
            } else {
                vec![MediaKind::Audio]
            };
            let outgoing =
                OutgoingCall::place(&client, &mut pushes, &uri, kinds, media.options()).await?;
            println!(
                "calling {uri} (session {}); ringing {} device(s)",
                outgoing.session_id(),
                outgoing.rung()
            );
            let code = match outgoing.wait_for_answer().await? {
                Answer::Accepted(call) => {
                    hold_call(*call, hangup_after).await?;
                    ExitCode::SUCCESS
                }
                Answer::Rejected(reject) => {
                    println!(
                        "rejected: {}{}",
                        reject.reason,
                        reject
                            .reason_text
                            .map(|t| format!(" ({t})"))
                            .unwrap_or_default()
                    );
                    ExitCode::from(3)
                }
                Answer::Ended(cancel) => {
                    println!("call ended: {}", cancel.reason);
                    ExitCode::from(4)
                }
            };
            pushes.ack().await?;
            Ok(code)
        }
        EndpointCommand::Answer {
            endpoint,
            auto_accept,
            auto_reject,
            once,
            media,
        } => {
            let client = endpoint.client()?;
            let options = media.options();
            let mut pushes = client.push_channel(endpoint.push).await?;
            println!("waiting for calls to {}", client.identity.uris.join(", "));
            let decision = if auto_accept {
                Decision::Accept
            } else if let Some(reason) = auto_reject {
                Decision::Reject(reason)
            } else {
                Decision::Ask
            };
            loop {
                let settled = match call::next_incoming(&mut pushes).await? {
                    Incoming::Call(incoming) => {
                        take_call(incoming, &client, &mut pushes, decision, &options).await?
                    }
                    Incoming::Ended(cancel) => {
                        println!("call {} ended: {}", cancel.session_id, cancel.reason);
                        true
                    }
                    Incoming::Other(push) => {
                        println!("push: {}", push.action());
                        false
                    }
                };
                if once && settled {
                    pushes.ack().await?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

/// What `endpoint answer` does with a call: its `--auto-accept` or `--auto-reject`, or ask.
#[derive(Clone, Copy)]
pub enum Decision {
    Accept,
    Reject(RejectReason),
    Ask,
}

/// The caller's side of an answered call, printed, until the hang-up time (or Ctrl-C), or until
/// the other side ends it.
async fn hold_call(mut call: Call<'_>, hangup_after: Option<u64>) -> anyhow::Result<()> {
    println!("answered by {}", call.peer_uri());
    let hang_up = async {
        match hangup_after {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => switchyard_provider::demo::shutdown_signal().await,
        }
    };
    tokio::pin!(hang_up);
    let mut hanging_up = false;
    let end = loop {
        tokio::select! {
            _ = &mut hang_up, if !hanging_up => {
                hanging_up = true;
                call.hang_up();
            }
            event = call.next_event() => {
                if let Some(end) = print_event(event?) {
                    break end;
                }
            }
        }
    };
    match end {
        CallEnd::HungUp => println!("hung up"),
        CallEnd::Cancelled(_) | CallEnd::RemoteHangUp => println!("the other side hung up"),
    }
    if let Some(stats) = call.close().await {
        println!("{}", stats_line(&stats));
    }
    Ok(())
}

/// Takes up a call ringing here, printed, as `decision` says; false when it was not settled (the
/// provider refused the Accept), so `--once` waits for the next one.
async fn take_call(
    incoming: IncomingCall,
    client: &EndpointClient,
    pushes: &mut PushChannel,
    decision: Decision,
    options: &MediaOptions,
) -> anyhow::Result<bool> {
    let ring = incoming.push();
    let session_id = ring.session_id.to_string();
    println!(
        "incoming call from {} (session {session_id}){}",
        ring.peer_uri,
        match ring.peer_attestation {
            Some(Level::Full) => ", caller identity verified by its provider (attestation A)",
            Some(Level::Partial) =>
                ", caller identity NOT verified: its provider authenticated the device but is not known to host the number (attestation B)",
            Some(Level::Gateway) =>
                ", caller identity NOT verified: passed on by a gateway (attestation C)",
            None => ", caller identity NOT verified",
        }
    );
    let reject = match decision {
        Decision::Accept => None,
        Decision::Reject(reason) => Some(reason),
        Decision::Ask => (!ask("accept? [y/N] ").await?).then_some(RejectReason::Declined),
    };
    if let Some(reason) = reject {
        incoming.reject(client, reason, None).await?;
        println!("rejected ({reason})");
        return Ok(true);
    }
    let mut call = match incoming.accept(client, pushes, options).await? {
        Accepted::Answered(call) => *call,
        Accepted::Unsupported(why) => {
            println!("rejected (unsupported-media): {why}");
            return Ok(true);
        }
        Accepted::Refused(e) => {
            println!("could not accept: {e}");
            return Ok(false);
        }
    };
    println!("accepted");
    let end = loop {
        if let Some(end) = print_event(call.next_event().await?) {
            break end;
        }
    };
    println!("call {session_id} ended: {}", end.reason());
    if let Some(stats) = call.close().await {
        println!("{}", stats_line(&stats));
    }
    Ok(true)
}

/// Prints what happened in a call; its end, which each side words in its own way, is returned
/// instead.
fn print_event(event: CallEvent) -> Option<CallEnd> {
    match event {
        CallEvent::Media(event) => print_media_event(&event),
        CallEvent::RelayAdded { provider } => {
            println!("media: relay of {provider} allocated after the answer; update sent")
        }
        CallEvent::NoRelay(why) => println!("media: no relay for the call: {why}"),
        CallEvent::PeerUpdated { candidates } => {
            println!("the other side updated its media: {candidates} new candidate(s)")
        }
        CallEvent::PeerUpdateRefused(why) => {
            println!("the other side's media update was refused: {why}")
        }
        CallEvent::Stats(stats) => println!("{}", stats_line(&stats)),
        CallEvent::VideoMuted(true) => println!("muted video"),
        CallEvent::VideoMuted(false) => println!("unmuted video"),
        CallEvent::Ended(end) => return Some(end),
    }
    None
}

fn print_media_event(event: &MediaEvent) {
    match event {
        MediaEvent::PathSelected {
            local,
            remote,
            remote_address,
        } => println!("media path: {local} -> {remote} ({remote_address})"),
        MediaEvent::Secured { profile } => println!("media secured end to end: {profile}"),
        MediaEvent::Negotiated { audio, video } => println!(
            "media negotiated: audio {}, video {}",
            audio.as_deref().unwrap_or("none"),
            video.as_deref().unwrap_or("none")
        ),
        MediaEvent::RemoteVideoMuted(true) => println!("the other side muted its video"),
        MediaEvent::RemoteVideoMuted(false) => println!("the other side unmuted its video"),
        MediaEvent::RemoteHangUp => println!("media: the other side hung up (SIP BYE)"),
        MediaEvent::Ended => println!("media: ended"),
        MediaEvent::Failed(why) => println!("media failed: {why}"),
    }
}

fn stats_line(stats: &CallStats) -> String {
    let stream = |name: &str, s: &StreamStats| {
        format!(
            "{name} sent {} received {} lost {} jitter {:.1} ms",
            s.packets_sent, s.packets_received, s.packets_lost, s.jitter_ms
        )
    };
    format!(
        "stats: {} | {} | rtt {} | srtp failures {}",
        stream("audio", &stats.audio),
        stream("video", &stats.video),
        stats
            .round_trip
            .map(|rtt| format!("{:.1} ms", rtt.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into()),
        stats.srtp_failures
    )
}

async fn ask(prompt: &str) -> anyhow::Result<bool> {
    use tokio::io::AsyncBufReadExt;
    print!("{prompt}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
