//! `demo-tool`: the small helpers behind `tests/demo.sh`, built on the crate itself.
//!
//! - `demo-tool send <queue> <text>...`: creates the queue if needed and sends each text
//!   (reads `AZURE_STORAGE_CONNECTION_STRING`, `AZURE_STORAGE_QUEUE_ENDPOINT` like the sidecar).
//! - `demo-tool echo <port>`: an HTTP endpoint that prints every CloudEvent it receives and
//!   answers 200 — a stand-in for your application.

use azure_queue_sidecar::testing::connection_string;
use azure_queue_sidecar::testing::{account_key_queues, http_client};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("send") if args.len() >= 3 => send(&args[1], &args[2..]).await,
        Some("echo") if args.len() == 2 => echo(&args[1]).await,
        _ => Err("usage: demo-tool send <queue> <text>... | demo-tool echo <port>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-tool: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn send(queue_name: &str, texts: &[String]) -> Result<(), String> {
    azure_queue_sidecar::testing::install_crypto_provider();
    let raw = std::env::var("AZURE_STORAGE_CONNECTION_STRING")
        .unwrap_or_else(|_| "UseDevelopmentStorage=true".into());
    let parsed = connection_string::parse(&raw).map_err(|e| e.to_string())?;
    let (Some(account), Some(key)) = (parsed.account_name, parsed.account_key) else {
        return Err("the demo needs an account-key connection string".into());
    };
    let mut service = match std::env::var("AZURE_STORAGE_QUEUE_ENDPOINT") {
        Ok(url) => url::Url::parse(&url).map_err(|e| e.to_string())?,
        Err(_) => parsed.queue_endpoint,
    };
    let path = format!("{}/{queue_name}", service.path().trim_end_matches('/'));
    service.set_path(&path);
    let http = http_client().map_err(|e| e.to_string())?;
    let queue = account_key_queues(&account, key.secret(), http)
        .map_err(|e| e.to_string())?
        .queue(service)
        .map_err(|e| e.to_string())?;
    queue.create().await.map_err(|e| e.to_string())?;
    for text in texts {
        let id = queue
            .send(text, None, None)
            .await
            .map_err(|e| e.to_string())?;
        println!("sent {id}: {text}");
    }
    Ok(())
}

async fn echo(port: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .map_err(|e| format!("cannot listen on port {port}: {e}"))?;
    println!("echo endpoint listening on http://127.0.0.1:{port}/");
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let service = service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let mut lines = vec![format!("--- {} {}", request.method(), request.uri())];
                    for (name, value) in request.headers() {
                        let name = name.as_str();
                        if name.starts_with("ce-") || name == "content-type" {
                            lines.push(format!(
                                "{name}: {}",
                                String::from_utf8_lossy(value.as_bytes())
                            ));
                        }
                    }
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    lines.push(String::from_utf8_lossy(&body).into_owned());
                    println!("{}", lines.join("\n"));
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                },
            );
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
