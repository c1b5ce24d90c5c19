//! A gRPC call made by hand over HTTP/2, for tests that must send what no well-behaved client
//! sends (a header the spec forbids, a huge header block) and see exactly what comes back.

use std::net::SocketAddr;

use bytes::Bytes;

/// What came back: the HTTP status and the gRPC status, from the trailers (or from the
/// headers, for a trailers-only answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    pub http_status: u16,
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
}

/// Why no gRPC answer came: the connection or stream was reset, or closed.
#[derive(Debug, thiserror::Error)]
#[error("no gRPC answer: {0}")]
pub struct NoAnswer(String);

/// Calls `path` (`/package.Service/Method`) on `addr` with `message` (an encoded protobuf
/// request) and the extra `headers`, over a connection of its own.
pub async fn grpc_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    message: &[u8],
) -> Result<RawAnswer, NoAnswer> {
    let fail = |error: &dyn std::fmt::Display| NoAnswer(error.to_string());
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail(&e))?;
    let (client, connection) = h2::client::handshake(tcp).await.map_err(|e| fail(&e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| fail(&e))?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(()).map_err(|e| fail(&e))?;
    let (response, mut body) = client.send_request(request, false).map_err(|e| fail(&e))?;
    // A gRPC message: no compression, a big-endian length, the bytes.
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(message);
    body.send_data(Bytes::from(framed), true)
        .map_err(|e| fail(&e))?;
    let response = response.await.map_err(|e| fail(&e))?;
    let http_status = response.status().as_u16();
    let header = |headers: &http::HeaderMap, name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let mut grpc_status = header(response.headers(), "grpc-status");
    let mut grpc_message = header(response.headers(), "grpc-message");
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| fail(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(trailers) = body.trailers().await.map_err(|e| fail(&e))? {
        grpc_status = grpc_status.or_else(|| header(&trailers, "grpc-status"));
        grpc_message = grpc_message.or_else(|| header(&trailers, "grpc-message"));
    }
    driver.abort();
    Ok(RawAnswer {
        http_status,
        grpc_status,
        grpc_message,
    })
}
