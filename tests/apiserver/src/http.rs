//! The double's HTTP/1.1: reading requests, serving a connection, and a raw client for tests of
//! the double's own rules.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use super::{handle, ApiServer, BTreeMap, State};

impl ApiServer {
    /// Sends one raw request (token `token`) and returns the status code and the JSON body: for
    /// tests of the double's own rules, with no client in between.
    pub fn raw(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut conn = TcpStream::connect(self.addr).expect("connect to the double");
        let text = body.map(Value::to_string).unwrap_or_default();
        // A PATCH body is a merge patch (the only kind the double speaks).
        let content_type = match method {
            "PATCH" => "application/merge-patch+json",
            _ => "application/json",
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: double\r\nauthorization: Bearer {token}\r\n\
             content-type: {content_type}\r\naccept: application/json\r\n\
             content-length: {}\r\n\r\n",
            text.len()
        );
        conn.write_all((head + &text).as_bytes()).expect("send");
        let mut r = BufReader::new(conn);
        let mut status = String::new();
        r.read_line(&mut status).expect("status line");
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().expect("content-length");
                }
            }
        }
        let mut buf = vec![0; len];
        r.read_exact(&mut buf).expect("body");
        (code, serde_json::from_slice(&buf).unwrap_or(Value::Null))
    }
}

pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: BTreeMap<String, String>,
    pub(super) auth: Option<String>,
    pub(super) accept: String,
    pub(super) content_type: String,
    pub(super) body: Vec<u8>,
}

/// Reads one request; `None` at end of stream or on a malformed request.
pub(super) fn read_request<S: Read>(r: &mut BufReader<S>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut len = 0usize;
    let mut auth = None;
    let mut accept = String::new();
    let mut content_type = String::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "authorization" => auth = Some(v.trim().to_string()),
            "accept" => accept = v.trim().to_string(),
            "content-type" => content_type = v.trim().to_string(),
            "transfer-encoding" => return None, // chunked bodies: not spoken here
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        auth,
        accept,
        content_type,
        body,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn serve(conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    serve_stream(conn, state, stop);
}

/// Serves HTTP/1.1 requests from one connection (plain TCP, or a TLS stream wrapped around one).
pub(super) fn serve_stream<S: Read + Write>(conn: S, state: &Mutex<State>, stop: &AtomicBool) {
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (code, body) = handle(state, &req);
        let text = body.to_string();
        let reason = match code {
            200 => "OK",
            201 => "Created",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            422 => "Unprocessable Entity",
            _ => "Error",
        };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            text.len()
        );
        // One write per response: a split head and body would meet Nagle and delayed ACKs.
        let w = r.get_mut();
        if w.write_all((head + &text).as_bytes())
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
    }
}
