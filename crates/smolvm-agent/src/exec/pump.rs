//! The loop that runs beside one exec: it forwards output within the
//! host's credit window, feeds stdin, applies signals and the timeout, and
//! decides when the exec is over.
//!
//! The exec ends when its main process has exited and its output is
//! drained: both pipes at end-of-file, or [`DRAIN_WINDOW`] spent reading
//! while background processes still hold the pipes open. Time spent
//! waiting for credit does not count against the drain window, so output
//! written before the exit is never cut off by a slow host. The exception
//! is an exec killed by the host or by its timeout: a host that cancels
//! may never grant more credit, so then the window runs regardless.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use smolvm_protocol::{Frame, Message, OutputStream, RequestId};

use super::handle::{Control, ExecHandle};
use super::tree::ProcessTree;
use crate::log::log;
use crate::reaper::ExitStatus;
use crate::session::Session;
use crate::sys;

/// Largest output frame. virtio-serial moves data much faster in large
/// writes than in 4 KiB ones.
pub(crate) const OUTPUT_CHUNK: usize = 128 * 1024;

/// How long output is still read after the main process exits.
const DRAIN_WINDOW: Duration = Duration::from_millis(100);

/// Signal number used for a timeout kill, and reported in `Exited`.
const TIMEOUT_SIGNAL: i32 = libc::SIGKILL;

/// The parent's ends of the child's pipes, all nonblocking.
#[derive(Debug)]
pub(crate) struct Pipes {
    pub(crate) stdout: File,
    pub(crate) stderr: File,
    /// Absent when stdin is `/dev/null`.
    pub(crate) stdin: Option<File>,
}

/// Marker for a loop that stopped without an `Exited` frame because the
/// host is gone.
#[derive(Debug)]
pub(crate) struct Aborted;

pub(crate) struct Pump<'a> {
    session: &'a Session,
    id: RequestId,
    handle: &'a ExecHandle,
    tree: &'a ProcessTree,
    started: Instant,
    deadline: Option<Instant>,
    window: u64,
    stdout: Option<File>,
    stderr: Option<File>,
    stdin: Option<File>,
    stdin_queue: VecDeque<Vec<u8>>,
    stdin_closed: bool,
    exit: Option<(ExitStatus, Instant)>,
    timed_out: bool,
    /// SIGKILL was sent to the exec (by the host or on timeout).
    killed: bool,
    drain_left: Duration,
    buf: Vec<u8>,
}

impl<'a> Pump<'a> {
    pub(crate) fn new(
        session: &'a Session,
        id: RequestId,
        handle: &'a ExecHandle,
        tree: &'a ProcessTree,
        pipes: Pipes,
        window: u64,
        timeout: Option<Duration>,
    ) -> Self {
        let started = Instant::now();
        Self {
            session,
            id,
            handle,
            tree,
            started,
            deadline: timeout.map(|t| started + t),
            window,
            stdout: Some(pipes.stdout),
            stderr: Some(pipes.stderr),
            stdin: pipes.stdin,
            stdin_queue: VecDeque::new(),
            stdin_closed: false,
            exit: None,
            timed_out: false,
            killed: false,
            drain_left: DRAIN_WINDOW,
            buf: vec![0u8; OUTPUT_CHUNK],
        }
    }

    /// Runs until the exec is over and returns its `Exited` message, or
    /// stops early (after killing every process) when the host is gone.
    pub(crate) fn run(mut self) -> Result<Message, Aborted> {
        loop {
            let control = self.handle.take();
            if let Err(aborted) = self.apply(control) {
                self.tree.kill_all();
                return Err(aborted);
            }
            self.enforce_timeout();
            if self.is_done() {
                return Ok(self.exited());
            }
            if let Err(aborted) = self.wait_and_transfer() {
                self.tree.kill_all();
                return Err(aborted);
            }
        }
    }

    fn apply(&mut self, control: Control) -> Result<(), Aborted> {
        if control.aborted {
            return Err(Aborted);
        }
        self.window = self.window.saturating_add(control.credit);
        // Stdin sent to an exec started without it goes nowhere.
        if self.stdin.is_some() {
            self.stdin_queue.extend(control.stdin);
        }
        self.stdin_closed |= control.stdin_closed;
        for signal in control.signals {
            self.tree.signal(signal);
            self.killed |= signal == libc::SIGKILL;
        }
        if self.exit.is_none() {
            self.exit = control.exit;
        }
        if self.stdin_closed && self.stdin_queue.is_empty() {
            self.stdin = None;
        }
        Ok(())
    }

    fn enforce_timeout(&mut self) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if self.exit.is_none() && !self.timed_out && Instant::now() >= deadline {
            self.tree.kill_all();
            self.timed_out = true;
            self.killed = true;
        }
    }

    fn is_done(&self) -> bool {
        let pipes_closed = self.stdout.is_none() && self.stderr.is_none();
        self.exit.is_some() && (pipes_closed || self.drain_left.is_zero())
    }

    /// Polls the pipes and the wake pipe once, then moves whatever is ready.
    fn wait_and_transfer(&mut self) -> Result<(), Aborted> {
        let can_read = self.window > 0;
        let mut fds = vec![sys::pollfd(self.handle.wake_fd(), libc::POLLIN)];
        let mut slots = [None; 3];
        let wanted = [
            (self.stdout.as_ref().filter(|_| can_read), libc::POLLIN),
            (self.stderr.as_ref().filter(|_| can_read), libc::POLLIN),
            (
                self.stdin.as_ref().filter(|_| !self.stdin_queue.is_empty()),
                libc::POLLOUT,
            ),
        ];
        for (slot, (file, events)) in slots.iter_mut().zip(wanted) {
            if let Some(file) = file {
                *slot = Some(fds.len());
                fds.push(sys::pollfd(file.as_fd(), events));
            }
        }

        let draining = self.exit.is_some() && (can_read || self.killed);
        let before = Instant::now();
        if let Err(e) = sys::poll(&mut fds, self.poll_timeout(draining)) {
            log!("exec {}: poll failed: {e}", self.id.0);
            std::thread::sleep(Duration::from_millis(10));
        }

        let ready = |slot: Option<usize>| slot.is_some_and(|i| fds[i].revents != 0);
        if ready(slots[0]) {
            self.forward_output(OutputStream::Stdout)?;
        }
        if ready(slots[1]) {
            self.forward_output(OutputStream::Stderr)?;
        }
        if ready(slots[2]) {
            self.feed_stdin();
        }

        // Reading and sending count too, so a background process that
        // keeps writing cannot stretch the drain.
        if draining {
            self.drain_left = self.drain_left.saturating_sub(before.elapsed());
        }
        Ok(())
    }

    fn poll_timeout(&self, draining: bool) -> Option<Duration> {
        let now = Instant::now();
        let until_deadline = self
            .deadline
            .filter(|_| self.exit.is_none() && !self.timed_out)
            .map(|deadline| deadline.saturating_duration_since(now));
        let until_drained = draining.then_some(self.drain_left);
        match (until_deadline, until_drained) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads one chunk (at most the window) and sends it.
    fn forward_output(&mut self, stream: OutputStream) -> Result<(), Aborted> {
        let max = OUTPUT_CHUNK.min(usize::try_from(self.window).unwrap_or(usize::MAX));
        let pipe = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        let Some(file) = pipe else { return Ok(()) };

        let n = match file.read(&mut self.buf[..max]) {
            Ok(0) => {
                *pipe = None;
                return Ok(());
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(());
            }
            Err(e) => {
                log!("exec {}: reading {stream:?} failed: {e}", self.id.0);
                *pipe = None;
                return Ok(());
            }
        };

        self.window -= n as u64;
        let frame = Frame::with_data(
            Message::Output {
                id: self.id,
                stream,
            },
            self.buf[..n].to_vec(),
        );
        self.session.send(&frame).map_err(|_| Aborted)
    }

    /// Writes as much queued stdin as the pipe takes. A closed pipe (the
    /// command stopped reading) drops the rest.
    fn feed_stdin(&mut self) {
        let Some(file) = &mut self.stdin else { return };
        while let Some(chunk) = self.stdin_queue.front_mut() {
            match file.write(chunk) {
                Ok(n) if n == chunk.len() => {
                    self.stdin_queue.pop_front();
                }
                Ok(n) => {
                    chunk.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stdin = None;
                    self.stdin_queue.clear();
                    return;
                }
            }
        }
        if self.stdin_closed {
            self.stdin = None;
        }
    }

    fn exited(&self) -> Message {
        let (status, exited_at) = self
            .exit
            .unwrap_or((ExitStatus::Signal(TIMEOUT_SIGNAL), Instant::now()));
        let (exit_code, signal) = match status {
            _ if self.timed_out => (128 + TIMEOUT_SIGNAL, Some(TIMEOUT_SIGNAL)),
            ExitStatus::Code(code) => (code, None),
            ExitStatus::Signal(signal) => (128 + signal, Some(signal)),
        };
        let duration = exited_at.saturating_duration_since(self.started);
        Message::Exited {
            id: self.id,
            exit_code,
            signal,
            timed_out: self.timed_out,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        }
    }
}
