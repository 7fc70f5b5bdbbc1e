//! What a request needs before it goes on an HTTP/1.1 connection, beyond hyper's own framing.

use http::Request;
use http::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use hyper::body::Body;

/// Says `Transfer-Encoding: chunked` for a GET or HEAD whose body has no known length. hyper's
/// client sends such a request as bodiless (GET and HEAD "almost never have bodies") and the
/// client's body, HTTP/2 DATA frames or HTTP/1.1 chunks, would be lost without an error; nginx
/// forwards it. A body of known length keeps its Content-Length, and an empty one stays
/// bodiless. As with nginx, such a GET goes on once its body has ended: an HTTP/2 GET whose
/// HEADERS frame leaves the stream open waits for its DATA frames or END_STREAM (within
/// `request_body_timeout`), where it used to go at once without them.
pub(super) fn keep_body<B: Body>(request: &mut Request<B>) {
    let needs_chunked = matches!(*request.method(), http::Method::GET | http::Method::HEAD)
        && !request.body().is_end_stream()
        && request.body().size_hint().exact().is_none()
        && !request.headers().contains_key(CONTENT_LENGTH);
    if needs_chunked {
        request
            .headers_mut()
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Empty, Full, StreamBody};
    use hyper::body::Frame;

    fn chunked<B: Body>(method: http::Method, body: B) -> bool {
        let mut request = Request::builder()
            .method(method)
            .body(body)
            .unwrap_or_else(|_| unreachable!("a valid request"));
        keep_body(&mut request);
        request.headers().get(TRANSFER_ENCODING) == Some(&HeaderValue::from_static("chunked"))
    }

    fn streamed() -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames = [Ok(Frame::data(Bytes::from_static(b"hello")))];
        StreamBody::new(tokio_stream::iter(frames))
    }

    #[test]
    fn a_get_or_head_with_a_body_of_unknown_length_goes_chunked() {
        assert!(chunked(http::Method::GET, streamed()));
        assert!(chunked(http::Method::HEAD, streamed()));
    }

    #[test]
    fn other_requests_are_left_to_hyper() {
        // Empty or of known length: bodiless, or with its Content-Length.
        assert!(!chunked(http::Method::GET, Empty::<Bytes>::new()));
        assert!(!chunked(
            http::Method::GET,
            Full::new(Bytes::from_static(b"x"))
        ));
        // hyper sends any other method's body of unknown length chunked by itself.
        assert!(!chunked(http::Method::POST, streamed()));
        let mut request = Request::get("/")
            .body(streamed())
            .unwrap_or_else(|_| unreachable!());
        request
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        keep_body(&mut request);
        assert!(request.headers().get(TRANSFER_ENCODING).is_none());
    }
}
