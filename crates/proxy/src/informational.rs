//! 1xx responses of an upstream passed on to the client (RFC 9110 §15.2: a proxy forwards
//! them), such as `103 Early Hints`. The client's HTTP/1.1 connection puts a
//! [`InformationalSender`] in each request's extensions (hyper's, patched: see
//! `vendor/hyper/PATCHES.md`); the request to the upstream carries it, and whichever client
//! sends it (the lean codec or hyper's) gives it what comes before the final response. None
//! is ever stored: they are not final responses.

use http::{Request, Response, StatusCode};
use hyper::ext::InformationalSender;

use crate::hop_by_hop::{strip_hop_by_hop, Present};

/// Passes `response`, a 1xx response of the upstream, on to the client by `sender`: any but
/// `100 Continue` (each hop answers `Expect` itself) and `101` (a switch of protocols is a
/// final response). Its hop-by-hop fields are not passed on. One the client's connection
/// cannot take (too many waiting, the final response begun) is dropped.
pub(crate) fn pass_on(sender: &InformationalSender, mut response: Response<()>) {
    let status = response.status();
    if status == StatusCode::CONTINUE || status == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let mut present = Present::of(response.headers());
    strip_hop_by_hop(response.headers_mut(), &mut present);
    let _ = sender.send(response);
}

/// Has hyper's client pass the 1xx responses to `request` on to the client whose sender it
/// carries.
pub(crate) fn through_hyper<B>(request: &mut Request<B>) {
    let Some(sender) = request.extensions().get::<InformationalSender>().cloned() else {
        return;
    };
    hyper::ext::on_informational(request, move |response| {
        let mut copy = Response::new(());
        *copy.status_mut() = response.status();
        *copy.headers_mut() = response.headers().clone();
        pass_on(&sender, copy);
    });
}
