//! Connection limits on real sockets: slow request bodies get 408, a silent client is closed
//! after the header timeout, one address is capped at `limits.ip_max_connections`, and a crowd
//! of slow clients does not stop the server answering (under a 1,024 open-file soft limit).
//!
//! "Other" clients connect from 127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux), so the
//! server sees them as a different address from the test's own requests.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

fn with_limits(limits: &str) -> String {
    format!("{}\n[limits]\n{limits}\n", config(&[]))
}

fn server_addr(address: &str) -> SocketAddr {
    address.trim_start_matches("http://").parse().unwrap()
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A valid request head for a submit whose body is `length` bytes, none sent yet.
fn slow_head(length: usize) -> String {
    format!(
        "POST /v1/executions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Sends the head, then one body byte every `every` while reading; returns the whole answer
/// (the server closes the connection after it), or panics after `within`.
async fn trickle(stream: TcpStream, every: Duration, within: Duration) -> String {
    let (mut read, mut write) = stream.into_split();
    write.write_all(slow_head(10_000).as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        loop {
            if write.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(within, read.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes in time")
        .ok();
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

fn error_code(answer: &str) -> String {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("json body: {answer}"));
    v["error"]["code"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn a_body_slower_than_its_deadline_gets_408_and_the_connection_closed() {
    let app = spawn_app_with(
        &with_limits("body_timeout_ms = 1500\nbody_min_bytes_per_sec = 0"),
        |_| {},
    )
    .await;
    let started = Instant::now();
    let stream = TcpStream::connect(server_addr(&app.address)).await.unwrap();
    let answer = trickle(stream, Duration::from_millis(200), Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(error_code(&answer), "request_timeout");
    assert!(answer.contains("within 1500 ms"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[actix_web::test]
async fn a_body_below_the_minimum_rate_gets_408_long_before_the_deadline() {
    let app = spawn_app_with(
        &with_limits(
            "body_timeout_ms = 60000\nbody_min_bytes_per_sec = 100\nbody_rate_grace_ms = 500",
        ),
        |_| {},
    )
    .await;
    let stream = TcpStream::connect(server_addr(&app.address)).await.unwrap();
    // 10 bytes a second.
    let answer = trickle(stream, Duration::from_millis(100), Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(error_code(&answer), "request_timeout");
    assert!(
        answer.contains("slower than 100 bytes per second"),
        "{answer}"
    );
}

#[actix_web::test]
async fn a_client_that_never_finishes_its_head_is_closed() {
    let app = spawn_app_with(&with_limits("header_timeout_ms = 1000"), |_| {}).await;
    let mut stream = TcpStream::connect(server_addr(&app.address)).await.unwrap();
    stream
        .write_all(b"POST /v1/executions HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("closed within 10 s")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[actix_web::test]
async fn one_address_holds_at_most_ip_max_connections() {
    let app = spawn_app_with(&with_limits("ip_max_connections = 3"), |_| {}).await;
    let to = server_addr(&app.address);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.2", to).await;
        // One answered request proves the server has counted this connection: workers take
        // accepted sockets in parallel, so a bare connect could be counted after the next one.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        s.write_all(slow_head(1_000).as_bytes()).await.unwrap();
        held.push(s);
    }
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut extra = connect_from("127.0.0.2", to).await;
    extra.write_all(healthz).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: "),
        "{answer}"
    );
    assert_eq!(error_code(&answer), "rate_limited");
    assert!(answer.contains("at most 3"), "{answer}");

    // Another address is not affected.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // A closed connection gives its place back.
    drop(held.pop());
    let mut admitted = false;
    for _ in 0..50 {
        let mut s = connect_from("127.0.0.2", to).await;
        s.write_all(healthz).await.unwrap();
        let mut head = [0u8; 12];
        if s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 200") {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "a freed place is given to the next connection");
}

#[actix_web::test]
async fn eleven_hundred_slow_clients_do_not_stop_the_server_under_a_1024_file_limit() {
    // The test process holds the client ends: it needs more than 1,024 descriptors itself.
    switchyard::startup::raise_fd_limit().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    let toml = with_limits(
        "ip_max_connections = 2000\nbody_timeout_ms = 120000\nbody_min_bytes_per_sec = 0",
    );
    std::fs::write(&config_path, toml).unwrap();
    let server = spawn_process_with_fd_limit(&config_path, &dir.path().join("data"), 1024);
    let to = server_addr(&server.address);

    let mut slow = Vec::new();
    for _ in 0..1_100 {
        let mut s = connect_from("127.0.0.2", to).await;
        s.write_all(slow_head(100_000).as_bytes()).await.unwrap();
        s.write_all(b" ").await.unwrap();
        slow.push(s);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let res = client
        .get(format!("{}/healthz", server.address))
        .send()
        .await
        .expect("/healthz answers while 1,100 slow clients are connected");
    assert_eq!(res.status(), 200);
    // The slow clients were accepted, not dropped: none of them has been answered or closed.
    let mut buf = [0u8; 1];
    for s in slow.iter_mut().step_by(50) {
        let read = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "a slow client got an answer or a close early"
        );
    }
}
