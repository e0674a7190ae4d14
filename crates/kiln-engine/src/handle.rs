//! The engine on its own thread, shared by any number of callers (server handlers,
//! refinement, benchmarks) through a cheap, cloneable handle.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::{Engine, EngineStats, Event, Limits, Request, Runner, Sink};
use crate::error::SubmitError;
use crate::score::{EmbedRequest, EmbedSink, PromptScore, ScoreError, ScoreRequest, ScoreSink};

type Reply = mpsc::SyncSender<Result<u64, SubmitError>>;

enum Cmd {
    /// Checked on the caller's thread already; a late failure goes to the sink.
    Submit(u64, Request, Sink),
    Score(ScoreRequest, ScoreSink, Reply),
    /// A refusal goes to the sink.
    Embed(EmbedRequest, EmbedSink),
    Cancel(u64),
    Shutdown,
}

/// A handle to an engine running on its own thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Mutex<EngineStats>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    limits: Limits,
    /// Requests sent to the engine thread that it has not taken yet.
    in_flight: Arc<AtomicUsize>,
    /// The engine's request ids.
    ids: Arc<std::sync::atomic::AtomicU64>,
    hidden_size: usize,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineHandle")
    }
}

impl EngineHandle {
    /// Moves `engine` onto a new thread and returns a handle to it.
    pub fn spawn<R: Runner + 'static>(mut engine: Engine<R>) -> Self {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let stats = Arc::new(Mutex::new(engine.stats()));
        let limits = engine.limits();
        let ids = engine.id_source();
        let hidden_size = engine.runner().hidden_size();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight_h = in_flight.clone();
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-engine".into())
            .spawn(move || {
                let mut open = true;
                while open || engine.has_work() {
                    // Idle: block for the next command. Busy: take what has arrived.
                    let first = if engine.has_work() || !open {
                        rx.try_recv().ok()
                    } else {
                        rx.recv().ok()
                    };
                    let mut next = first;
                    if next.is_none() && !engine.has_work() {
                        open = false; // every handle is gone
                    }
                    // Submissions taken this round leave `in_flight` only once the stats that
                    // count them as waiting are published, so that a handle's check never
                    // misses them (it may count them twice for a moment: a 429 then comes
                    // early, never late).
                    let mut taken = 0;
                    while let Some(cmd) = next {
                        match cmd {
                            Cmd::Submit(id, req, mut sink) => {
                                taken += 1;
                                // Checked again against the queue as it is now; a refusal
                                // reaches the caller through its sink.
                                let waiting = engine.stats().waiting;
                                match engine.limits().check_request(&req, waiting) {
                                    Ok(()) => {
                                        // Checked just above against the same state.
                                        let _ = engine.submit_as(id, req, sink);
                                    }
                                    Err(e) => {
                                        sink(Event::Failed(e.to_string()));
                                    }
                                }
                            }
                            Cmd::Score(req, done, reply) => {
                                let _ = reply.send(engine.submit_score(req, done));
                            }
                            Cmd::Embed(req, done) => match engine.check_embed(&req) {
                                Ok(()) => {
                                    let _ = engine.submit_embed(req, done);
                                }
                                Err(e) => done(Err(e.to_string())),
                            },
                            Cmd::Cancel(id) => engine.cancel_waiting(id),
                            Cmd::Shutdown => open = false,
                        }
                        next = rx.try_recv().ok();
                    }
                    if taken > 0 {
                        if let Ok(mut s) = st.lock() {
                            *s = engine.stats();
                        }
                        in_flight.fetch_sub(taken, Ordering::Release);
                    }
                    if engine.has_work() {
                        // A failed step has already failed its sequences; carry on.
                        let _ = engine.step();
                    }
                    if let Ok(mut s) = st.lock() {
                        *s = engine.stats();
                    }
                }
            })
            .expect("spawning the engine thread");
        EngineHandle {
            tx,
            stats,
            thread: Arc::new(Mutex::new(Some(thread))),
            limits,
            in_flight: in_flight_h,
            ids,
            hidden_size,
        }
    }

    /// Queues a request; events go to `sink` from the engine thread. The request is checked
    /// here, on the caller's thread, and the call returns without waiting for the engine (an
    /// async server's workers never block on a running step).
    /// Returns the request's id (for [`EngineHandle::cancel_waiting`]).
    pub fn submit(&self, req: Request, sink: Sink) -> Result<u64, SubmitError> {
        // In flight first: once it no longer counts a request, the stats do (see the engine
        // thread's loop). The place is taken before the check, so that of two callers at once
        // the second counts the first: checked, then taken, both could pass here and the
        // engine thread refuse one of them after it was accepted (a 500, not a 429).
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let waiting = self.stats().waiting + in_flight;
        if let Err(e) = self.limits.check_request(&req, waiting) {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Cmd::Submit(id, req, sink)).map_err(|_| {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            SubmitError::Prompt("the engine has shut down".into())
        })?;
        Ok(id)
    }

    /// Values of one embedding (0 when the engine cannot embed texts).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// What requests are checked against.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Queues a scoring request (see [`Engine::submit_score`]); the result goes to `done`
    /// from the engine thread.
    pub fn submit_score(&self, req: ScoreRequest, done: ScoreSink) -> Result<u64, SubmitError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .send(Cmd::Score(req, done, reply_tx))
            .map_err(|_| SubmitError::Prompt("the engine has shut down".into()))?;
        reply_rx
            .recv()
            .map_err(|_| SubmitError::Prompt("the engine has shut down".into()))?
    }

    /// Queues an embedding (see [`Engine::submit_embed`]) without waiting: the vector, or
    /// why there is none (a refusal too), goes to `done` from the engine thread.
    pub fn submit_embed(&self, req: EmbedRequest, done: EmbedSink) {
        if let Err(mpsc::SendError(Cmd::Embed(_, done))) = self.tx.send(Cmd::Embed(req, done)) {
            done(Err("the engine has shut down".into()));
        }
    }

    /// Embeds a text and waits for the vector.
    pub fn embed(&self, req: EmbedRequest) -> Result<Vec<f32>, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_embed(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| "the engine shut down".to_owned())?
    }

    /// Scores a text and waits for the result: the log-probability of each token from
    /// `req.from` on, given the tokens before it.
    pub fn score(&self, req: ScoreRequest) -> Result<PromptScore, ScoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_score(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv()
            .map_err(|_| ScoreError::Failed("the engine shut down".into()))?
            .map_err(ScoreError::Failed)
    }

    /// The latest counters.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Drops request `id` if it is still queued (see [`Engine::cancel_waiting`]); does not
    /// wait.
    pub fn cancel_waiting(&self, id: u64) {
        let _ = self.tx.send(Cmd::Cancel(id));
    }

    /// Whether the engine thread stopped without being asked to (it panicked): the engine
    /// takes no more work, and a server must say it is unhealthy.
    pub fn has_failed(&self) -> bool {
        self.thread
            .lock()
            .map_or(true, |t| t.as_ref().is_some_and(|h| h.is_finished()))
    }

    /// Lets running requests finish, then stops the engine thread.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}
