//! Records as consumed and as produced.

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (a delete on a compacted topic).
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A record to write. The partition is chosen from the key (Kafka's murmur2 partitioner) unless set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
}

impl OutRecord {
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: Some(key.into()),
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    /// A delete marker for `key` on a compacted topic.
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: Some(key.into()),
            value: None,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    pub fn with_headers(mut self, headers: Vec<(String, Vec<u8>)>) -> Self {
        self.headers = headers;
        self
    }

    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// Length-prefixed binary form of an [`OutRecord`], for outboxes that hold records until the
/// bus acknowledges them.
impl OutRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Sized up front: a record is encoded once per send, and growing the buffer field by
        // field copied a cohort change's bytes several times.
        let field = |b: Option<usize>| 1 + b.map_or(0, |n| 4 + n);
        let len = field(Some(self.topic.len()))
            + field(self.partition.map(|_| 4))
            + field(self.timestamp_ms.map(|_| 8))
            + field(self.key.as_ref().map(Vec::len))
            + field(self.value.as_ref().map(Vec::len))
            + 4
            + self
                .headers
                .iter()
                .map(|(k, v)| field(Some(k.len())) + field(Some(v.len())))
                .sum::<usize>();
        let mut out = Vec::with_capacity(len);
        codec::put_bytes(&mut out, Some(self.topic.as_bytes()));
        codec::put_bytes(
            &mut out,
            self.partition
                .map(|p| p.to_le_bytes())
                .as_ref()
                .map(|b| &b[..]),
        );
        codec::put_bytes(
            &mut out,
            self.timestamp_ms
                .map(|t| t.to_le_bytes())
                .as_ref()
                .map(|b| &b[..]),
        );
        codec::put_bytes(&mut out, self.key.as_deref());
        codec::put_bytes(&mut out, self.value.as_deref());
        codec::put_headers(&mut out, &self.headers);
        debug_assert_eq!(out.len(), len, "the encoded length was sized exactly");
        out
    }

    /// Inverse of [`Self::to_bytes`]; `None` when the bytes are not a record.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut r = codec::Reader(bytes);
        let topic = String::from_utf8(r.bytes()??).ok()?;
        let partition = match r.bytes()? {
            Some(b) => Some(i32::from_le_bytes(b.as_slice().try_into().ok()?)),
            None => None,
        };
        let timestamp_ms = match r.bytes()? {
            Some(b) => Some(i64::from_le_bytes(b.as_slice().try_into().ok()?)),
            None => None,
        };
        let key = r.bytes()?;
        let value = r.bytes()?;
        let headers = r.headers()?;
        Some(Self {
            topic,
            partition,
            key,
            value,
            headers,
            timestamp_ms,
        })
    }
}

/// The byte-level pieces shared by the outbox form and the embedded log.
pub(crate) mod codec {
    pub fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            None => out.push(0),
            Some(b) => {
                out.push(1);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }

    pub fn put_headers(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)]) {
        out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
        for (k, v) in headers {
            put_bytes(out, Some(k.as_bytes()));
            put_bytes(out, Some(v));
        }
    }

    pub struct Reader<'a>(pub &'a [u8]);

    impl<'a> Reader<'a> {
        pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }

        pub fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }

        /// `Some(None)` for an absent value, `None` when the input is cut short.
        pub fn bytes(&mut self) -> Option<Option<Vec<u8>>> {
            match self.take(1)?[0] {
                0 => Some(None),
                _ => {
                    let n = self.u32()? as usize;
                    Some(Some(self.take(n)?.to_vec()))
                }
            }
        }

        pub fn headers(&mut self) -> Option<Vec<(String, Vec<u8>)>> {
            let n = self.u32()?;
            let mut headers = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                let k = String::from_utf8(self.bytes()??).ok()?;
                let v = self.bytes()??;
                headers.push((k, v));
            }
            Some(headers)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_record_bytes_round_trip() {
        let mut r = OutRecord::new("cdp.profiles", "k", "v")
            .with_headers(vec![("h".into(), b"x".to_vec())]);
        r.timestamp_ms = Some(42);
        assert_eq!(OutRecord::from_bytes(&r.to_bytes()), Some(r.clone()));
        let t = OutRecord::tombstone("t", "k").with_partition(3);
        assert_eq!(OutRecord::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(OutRecord::from_bytes(&[1, 200]), None);
    }
}
