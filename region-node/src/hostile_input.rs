//! Property tests: every decoder of outside input returns an error for garbage and
//! never panics. Each property runs `PROPTEST_CASES` cases (256 by default, so CI stays
//! quick); a longer run is `PROPTEST_CASES=200000 cargo test -p region-node --lib
//! hostile_input` (see docs/security.md).

use proptest::prelude::*;

use crate::connection_key::KeySigner;
use crate::protocol::codec;
use crate::rewind::Rewind;

proptest! {
    /// Client WebSocket text frames.
    #[test]
    fn json_frames_never_panic(text in ".{0,2000}") {
        let _ = codec::decode_json(&text);
    }

    /// Client WebSocket binary frames, including ones shaped like MessagePack maps.
    #[test]
    fn msgpack_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = codec::decode_msgpack(&bytes);
        let mut map = vec![0x85u8];
        map.extend_from_slice(&bytes);
        let _ = codec::decode_msgpack(&map);
    }

    /// Frames from mesh peers.
    #[test]
    fn mesh_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = crate::mesh::wire::decode(&bytes::BytesMut::from(&bytes[..]));
    }

    /// Frames from other regions' bridges: the prost envelope, then what it carries.
    #[test]
    fn bridge_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        crate::bridge::decode_untrusted(&bytes);
    }

    /// Connection keys presented on resume and recover.
    #[test]
    fn connection_keys_never_panic(text in ".{0,300}") {
        let signer = KeySigner::new("secret");
        prop_assert!(signer.verify(&text).is_err());
    }

    /// The `rewind` channel param.
    #[test]
    fn rewind_values_never_panic(text in ".{0,40}", now in any::<i64>()) {
        let _ = Rewind::parse(&text, now);
    }
}
