//! Request bodies are bounded: one over the limit is a 413 in the error shape, refused
//! from its `Content-Length` before anything is read, or — chunked, or lying about
//! its length — as soon as the bytes read pass the limit. Nothing larger than the
//! limit is ever buffered.

use futures::StreamExt;
use poem::http::StatusCode;
use poem::{Body, Endpoint, IntoResponse, Request, Response};

use super::ApiError;

/// The largest request body accepted, in bytes (`AUTHD_MAX_BODY_BYTES`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl BodyLimit {
    fn too_large(&self) -> poem::Error {
        ApiError::new(413, "payload_too_large", format!("the request body is larger than {} bytes", self.0)).into()
    }

    pub async fn call<E: Endpoint>(&self, endpoint: E, mut request: Request) -> poem::Result<Response> {
        let declared = request.header("content-length").and_then(|length| length.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.0 as u64) {
            return Err(self.too_large());
        }
        let mut stream = request.take_body().into_bytes_stream();
        let mut read = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| poem::Error::from_string(error.to_string(), StatusCode::BAD_REQUEST))?;
            if read.len() + chunk.len() > self.0 {
                return Err(self.too_large());
            }
            read.extend_from_slice(&chunk);
        }
        request.set_body(Body::from(read));
        endpoint.call(request).await.map(IntoResponse::into_response)
    }
}
