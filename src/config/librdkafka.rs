//! What the linked librdkafka can tell about itself: the properties it knows, and what it was built with.

use super::secret::unprefixed;
use rdkafka::bindings as rd;
use std::ffi::{CStr, CString};

/// librdkafka knows this property, as a client or a topic property.
pub fn is_known_property(key: &str) -> bool {
    let Ok(name) = CString::new(unprefixed(key)) else {
        return false;
    };
    // Setting it is the one question that tells "unknown" from "not set": getting an unset property says unknown too.
    // An empty value, not the user's: setting some properties acts at once (plugin.library.paths loads libraries).
    let mut errstr = [0 as std::ffi::c_char; 256];
    let unknown = rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_UNKNOWN;
    // SAFETY: fresh configurations, freed here; librdkafka writes at most `errstr.len()` bytes of error text.
    unsafe {
        let conf = rd::rd_kafka_conf_new();
        let global = rd::rd_kafka_conf_set(conf, name.as_ptr(), c"".as_ptr(), errstr.as_mut_ptr(), errstr.len());
        rd::rd_kafka_conf_destroy(conf);
        if global != unknown {
            return true;
        }
        let topic = rd::rd_kafka_topic_conf_new();
        let res = rd::rd_kafka_topic_conf_set(topic, name.as_ptr(), c"".as_ptr(), errstr.as_mut_ptr(), errstr.len());
        rd::rd_kafka_topic_conf_destroy(topic);
        res != unknown
    }
}

/// librdkafka's version and `builtin.features` (compression codecs, TLS, SASL mechanisms), for `--version`.
pub fn describe() -> String {
    let (_, version) = rdkafka::util::get_rdkafka_version();
    let mut buf = [0u8; 512];
    let mut size = buf.len();
    let name = c"builtin.features";
    // SAFETY: a fresh configuration, freed here; librdkafka writes at most `size` bytes, NUL included.
    let features = unsafe {
        let conf = rd::rd_kafka_conf_new();
        let res = rd::rd_kafka_conf_get(conf, name.as_ptr(), buf.as_mut_ptr().cast(), &mut size);
        rd::rd_kafka_conf_destroy(conf);
        match res {
            rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK => {
                CStr::from_bytes_until_nul(&buf).map_or_else(|_| "?".into(), |s| s.to_string_lossy().into_owned())
            }
            _ => "?".into(),
        }
    };
    format!("librdkafka {version}, built with: {}", features.replace(',', ", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_knows_its_properties() {
        assert!(is_known_property("sasl.password"));
        assert!(is_known_property("producer.acks"), "a topic property");
        assert!(is_known_property("auto.offset.reset"), "a topic property");
        assert!(!is_known_property("sasl.pasword"));
        assert!(!is_known_property("bad\0name"));
    }

    #[test]
    fn it_is_built_with_tls_and_sasl() {
        let shown = describe();
        for feature in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer", "zstd"] {
            assert!(shown.contains(feature), "{feature} missing: {shown}");
        }
        // Only with the cargo features that link Cyrus SASL and libcurl.
        assert_eq!(shown.contains("sasl_gssapi"), cfg!(feature = "gssapi"), "{shown}");
        assert_eq!(shown.contains("oidc"), cfg!(feature = "oidc"), "{shown}");
    }
}
