//! Starting a real server on a free loopback port, and a small HTTP/1.1
//! client over a plain TCP stream that sends exactly the bytes each test
//! passes it.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use smolvm_engine::sandbox::Engine;
use smolvm_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Maximum wait for one whole response, because creating a sandbox under TCG
/// takes seconds, not minutes.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(180);

/// A server running in this process on a free loopback port.
pub(crate) struct RunningServer {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// Binds `config` on 127.0.0.1 with a free port and serves in the background.
    pub(crate) async fn start(engine: Engine, config: ServerConfig) -> Self {
        let config = ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            ..config
        };
        let server = Server::bind(config, engine)
            .await
            .expect("the server binds");
        let address = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            server.run(shutdown).await.expect("the server runs");
        });
        Self {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the server down gracefully and waits until it has stopped.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the server stops within 30 s")
                .expect("the server task does not panic");
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client {
            address: self.address,
            headers: Vec::new(),
        }
    }
}

/// A response read to its end.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error response with `status` and `code` in body and header.
    pub(crate) fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("x-smolvm-error-code"),
            Some(code),
            "{}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        body
    }
}

/// Sends requests to one server, each on a new connection.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub address: SocketAddr,
    /// Headers added to every request.
    pub headers: Vec<(String, String)>,
}

impl Client {
    pub(crate) async fn get(&self, path: &str) -> HttpResponse {
        self.send("GET", path, &[], None).await
    }

    pub(crate) async fn delete(&self, path: &str) -> HttpResponse {
        self.send("DELETE", path, &[], None).await
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        let body = serde_json::to_vec(body).unwrap();
        self.send(
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(&body),
        )
        .await
    }

    pub(crate) async fn post_empty(&self, path: &str) -> HttpResponse {
        self.send("POST", path, &[], Some(b"")).await
    }

    /// Sends one request and reads the whole response.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        let mut stream = self.open(method, path, headers, body).await;
        let read = stream.stream.read_to_end(&mut stream.raw);
        tokio::time::timeout(RESPONSE_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                panic!("{method} {path} got no response within {RESPONSE_TIMEOUT:?}")
            })
            .expect("the response reads");
        parse_response(&stream.raw)
    }

    /// Sends one request and returns the connection for reading the
    /// response as it arrives.
    pub(crate) async fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpStream {
        let mut stream = TcpStream::connect(self.address)
            .await
            .expect("the server accepts");
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            head.push_str(&format!("Host: {}\r\n", self.address));
        }
        for (name, value) in self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(headers.iter().copied())
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        if let Some(body) = body {
            // A server may reject a request before reading its whole body
            // (413) and close the connection; its response is still readable.
            if let Err(error) = stream.write_all(body).await {
                assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
            }
        }
        HttpStream {
            stream,
            raw: Vec::new(),
        }
    }
}

/// Parses a complete HTTP/1.1 response, undoing chunked encoding.
pub(crate) fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = find(raw, b"\r\n\r\n").expect("the response has a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();

    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest).0
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Decodes as much of a chunked body as is complete; returns the data and
/// whether the final chunk was seen.
pub(crate) fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    while let Some(line_end) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (body, true);
        }
        let start = line_end + 2;
        if raw.len() < start + size + 2 {
            break;
        }
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
    (body, false)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response being read as it arrives, such as server-sent events.
#[derive(Debug)]
pub(crate) struct HttpStream {
    stream: TcpStream,
    raw: Vec<u8>,
}

impl HttpStream {
    /// Reads until the decoded body contains `marker`, the response ends,
    /// or `timeout` passes; returns the whole body so far.
    pub(crate) async fn read_until(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let text = decoded_body(&self.raw);
            if !marker.is_empty() && text.contains(marker) {
                return text;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Err(_) => return text,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buffer[..n]),
                Ok(Err(e)) => panic!("reading the stream failed: {e}"),
            }
        }
    }

    /// Reads until the status line and headers have arrived; returns the status.
    pub(crate) async fn status(&mut self) -> u16 {
        let mut buffer = [0u8; 4096];
        while find(&self.raw, b"\r\n\r\n").is_none() {
            let n = self
                .stream
                .read(&mut buffer)
                .await
                .expect("the response reads");
            assert!(n > 0, "the connection closed before the headers");
            self.raw.extend_from_slice(&buffer[..n]);
        }
        parse_response(&self.raw).status
    }
}

fn decoded_body(raw: &[u8]) -> String {
    let Some(split) = find(raw, b"\r\n\r\n") else {
        return String::new();
    };
    let (body, _) = dechunk(&raw[split + 4..]);
    String::from_utf8_lossy(&body).into_owned()
}

/// Parses server-sent events text into (event name, data) pairs.
pub(crate) fn sse_events(text: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            }
        }
        if !data.is_empty() {
            let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            events.push((name, value));
        }
    }
    events
}
