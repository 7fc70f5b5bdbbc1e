//! Responses proxyd writes itself: redirects and fixed responses of route actions, and the
//! redirect of plain HTTP to https://.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::ResponseBody;

/// A redirect to `location` with its placeholders filled: {scheme} (`https` when the request
/// came over TLS), {host} (the request's Host, with port) and {path} (path and query).
pub fn redirect<B>(
    location: &str,
    status: StatusCode,
    req: &Request<B>,
    https: bool,
) -> Response<ResponseBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = location
        .replace("{scheme}", if https { "https" } else { "http" })
        .replace("{host}", host)
        .replace("{path}", path);
    located(status, &target)
}

/// 308 to `https://{host}{path}`: `host` as routing saw it (lower case, no port, so the
/// redirect goes to the default HTTPS port), path and query unchanged.
pub fn to_https<B>(host: &str, req: &Request<B>) -> Response<ResponseBody> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    located(
        StatusCode::PERMANENT_REDIRECT,
        &format!("https://{host}{path}"),
    )
}

/// An empty response with `Location: target`.
fn located(status: StatusCode, target: &str) -> Response<ResponseBody> {
    let mut response = body(status, Bytes::new());
    match HeaderValue::from_str(target) {
        Ok(v) => {
            response.headers_mut().insert(header::LOCATION, v);
        }
        // Only a client-supplied Host or path can make it invalid; hyper has checked both.
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// The answer to an ACME HTTP-01 validation request: the key authorization, as text.
pub fn challenge(key_authorization: &str) -> Response<ResponseBody> {
    let mut response = body(StatusCode::OK, Bytes::from(key_authorization.to_owned()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A fixed response from the config.
pub fn fixed(status: StatusCode, text: &Bytes, headers: &HeaderMap) -> Response<ResponseBody> {
    let mut response = body(status, text.clone());
    for (name, value) in headers {
        response.headers_mut().append(name, value.clone());
    }
    response
}

fn body(status: StatusCode, bytes: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_fills_the_placeholders() {
        let req = Request::get("/a/b?c=1")
            .header(header::HOST, "example.com:8080")
            .body(())
            .unwrap();
        let r = redirect(
            "https://{host}{path}",
            StatusCode::PERMANENT_REDIRECT,
            &req,
            false,
        );
        assert_eq!(r.status(), 308);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://example.com:8080/a/b?c=1"
        );
        let r = redirect("{scheme}://{host}/", StatusCode::FOUND, &req, true);
        assert_eq!(r.headers()[header::LOCATION], "https://example.com:8080/");
    }

    #[test]
    fn plain_http_goes_to_https_on_the_same_host_and_path() {
        let req = Request::get("/a/b?c=1")
            .header(header::HOST, "example.com:8080")
            .body(())
            .unwrap();
        let r = to_https("example.com", &req);
        assert_eq!(r.status(), 308);
        assert_eq!(r.headers()[header::LOCATION], "https://example.com/a/b?c=1");
    }

    #[test]
    fn fixed_keeps_status_body_and_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let r = fixed(StatusCode::IM_A_TEAPOT, &Bytes::from_static(b"tea"), &h);
        assert_eq!(r.status(), 418);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
    }
}
