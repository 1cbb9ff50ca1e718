//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a
//! pipe (`--remote-debugging-pipe`: commands go to its fd 3, answers and events come
//! from its fd 4, one JSON message each, NUL-terminated), so a test keeps one page
//! open and reads its DOM while the agent changes underneath it.

use std::{
    io::{BufRead, BufReader, PipeWriter, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    path::Path,
    process::{Child, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    cmd::{describe, in_ns},
    error::{LabError, Result, io_err},
};

/// How long one DevTools command may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the browser gets to exit after `Browser.close` before it is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A headless Chromium with one open page; closed (and killed if need be) on drop.
pub struct Browser {
    child: Child,
    commands: PipeWriter,
    answers: Receiver<Value>,
    next_id: u64,
    /// The page's DevTools session.
    session: String,
}

impl Browser {
    /// Chromium in network namespace `ns`, with its profile (and its stderr, in
    /// `stderr.log`) under `profile`, on one `width`×`height` page showing `url`.
    pub fn open(ns: &str, profile: &Path, url: &str, (width, height): (u32, u32)) -> Result<Self> {
        std::fs::create_dir_all(profile)
            .map_err(io_err(format!("creating {}", profile.display())))?;
        let log = profile.join("stderr.log");
        let stderr =
            std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let (theirs_in, commands) = std::io::pipe().map_err(io_err("a pipe for chromium"))?;
        let (answers_out, theirs_out) = std::io::pipe().map_err(io_err("a pipe for chromium"))?;
        let mut cmd = in_ns(ns, "chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--window-size={width},{height}"),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Its own process group, so a kill reaches every process it started.
        .process_group(0);
        let (read_fd, write_fd) = (theirs_in.as_raw_fd(), theirs_out.as_raw_fd());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || pipes_to_3_and_4(read_fd, write_fd));
        }
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: describe(&cmd),
            source,
        })?;
        // Our copies of its ends are closed, so its exit ends the reader below.
        drop((theirs_in, theirs_out));
        let (tx, answers) = mpsc::channel();
        thread::spawn(move || {
            for message in BufReader::new(answers_out).split(0).map_while(|m| m.ok()) {
                let Ok(message) = serde_json::from_slice::<Value>(&message) else {
                    continue;
                };
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            answers,
            next_id: 0,
            session: String::new(),
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }))?;
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(browser)
    }

    /// The value of JavaScript `expression` in the page (JSON-serialisable).
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let answer = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )?;
        if let Some(exception) = answer.get("exceptionDetails") {
            return Err(self.failed("Runtime.evaluate", exception.to_string()));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// The page as a PNG image.
    pub fn screenshot(&mut self) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let answer = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = answer["data"].as_str().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| self.failed("Page.captureScreenshot", e.to_string()))
    }

    /// Sends one command (to the page's session once there is one) and waits for
    /// its answer; events in between are dropped.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            return Err(self.failed(method, format!("writing the command: {e}")));
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(answer) if answer["id"] == id => {
                    return match answer.get("error") {
                        Some(error) => Err(self.failed(method, error.to_string())),
                        None => Ok(answer["result"].clone()),
                    };
                }
                Ok(_event) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(LabError::Timeout {
                        what: format!("chromium to answer {method}"),
                        after: ANSWER_TIMEOUT,
                        last: "no answer".to_owned(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failed(method, "chromium closed its pipe".to_owned()));
                }
            }
        }
    }

    fn failed(&mut self, method: &str, error: String) -> LabError {
        let exited = self.child.try_wait().ok().flatten();
        LabError::DevTools {
            method: method.to_owned(),
            error: match exited {
                Some(status) => format!("{error} (chromium exited: {status})"),
                None => error,
            },
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session.clear();
        let closed = self.call("Browser.close", json!({})).is_ok();
        let deadline = Instant::now() + CLOSE_GRACE;
        while closed && Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Still running: the whole group goes.
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL).ok();
        self.child.wait().ok();
    }
}

/// In the child before exec: `read` becomes fd 3 and `write` fd 4, both inherited
/// across exec. Copies above both first, so neither move closes the other end.
fn pipes_to_3_and_4(read: RawFd, write: RawFd) -> std::io::Result<()> {
    use nix::libc::{F_DUPFD, close, dup2, fcntl};
    // SAFETY: plain fd syscalls on fds this process owns.
    unsafe {
        let (r, w) = (fcntl(read, F_DUPFD, 10), fcntl(write, F_DUPFD, 10));
        if r < 0 || w < 0 || dup2(r, 3) < 0 || dup2(w, 4) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        close(r);
        close(w);
    }
    Ok(())
}
