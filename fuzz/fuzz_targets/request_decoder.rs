//! Arbitrary bytes into `RequestDecoder`, with the default limits and with
//! small ones: no panic, and every request returned is well formed.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use respool::codec::{Request, RequestDecoder, RequestLimits};

fn check(input: &[u8], limits: RequestLimits) {
    let mut dec = RequestDecoder::new(limits);
    let out = common::feed(&mut dec, input, &[]);
    let consumed = input.len() - out.rest.len();
    // Whatever is left is the unconsumed tail of the input.
    assert_eq!(&input[consumed..], &out.rest[..]);
    for req in &out.items {
        check_request(req, limits);
    }
}

fn check_request(req: &Request, limits: RequestLimits) {
    let raw = req.raw();
    assert_eq!(raw.first(), Some(&b'*'), "raw must be a RESP array");
    assert!(req.argc() >= 1);
    assert!(req.argc() as u64 <= limits.max_args);
    let args: Vec<&[u8]> = req.args().collect();
    assert_eq!(args.len(), req.argc(), "args() must yield argc() items");
    assert_eq!(req.name(), args[0], "name() must be the first argument");
    for (i, a) in args.iter().enumerate() {
        assert_eq!(req.arg(i), Some(*a));
    }
    assert_eq!(req.arg(req.argc()), None);
    // The raw bytes are forwarded verbatim upstream, so they must be exactly
    // the canonical encoding of the arguments Redis will see: a request that
    // respool accepts but Redis would reject (`$03`, `$-0`, ...) would kill a
    // shared upstream connection. For inline input this is how raw was built.
    let canonical = Request::from_args(&args);
    assert_eq!(canonical.raw(), raw, "raw is not the canonical encoding");
    assert_eq!(&canonical, req);
    let _ = format!("{req:?}");
}

fuzz_target!(|data: &[u8]| {
    check(data, RequestLimits::default());
    check(data, common::SMALL_LIMITS);
});
