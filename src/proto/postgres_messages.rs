//! PostgreSQL's frontend messages that run something (Query, Parse, Bind,
//! Execute) and its ErrorResponse, read from their bodies as the protocol
//! lays them out: for the postgres module, and for connections the TLS
//! modules capture. The bytes come from clients: every read is checked, and a
//! body cut short (by the probe's bound) gives what it has.

/// A Bind's parameter: None for SQL NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub binary: bool,
    pub value: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Query {
        text: Vec<u8>,
    },
    Parse {
        statement: Vec<u8>,
        text: Vec<u8>,
    },
    Bind {
        portal: Vec<u8>,
        statement: Vec<u8>,
        parameters: Vec<Parameter>,
    },
    Execute {
        portal: Vec<u8>,
    },
}

/// A cursor over a message body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    /// A NUL-terminated string; the rest when the body ends first.
    fn string(&mut self) -> &'a [u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        let (string, rest) = self.0.split_at(end);
        self.0 = rest.get(1..).unwrap_or_default();
        string
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(taken)
    }

    fn int16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn int32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The message of type `kind` with `body`; None for the types not read.
pub fn parse(kind: u8, body: &[u8]) -> Option<Message> {
    let mut body = Body(body);
    match kind {
        b'Q' => Some(Message::Query {
            text: body.string().to_vec(),
        }),
        b'P' => {
            let statement = body.string().to_vec();
            let text = body.string().to_vec();
            Some(Message::Parse { statement, text })
        }
        b'B' => {
            let portal = body.string().to_vec();
            let statement = body.string().to_vec();
            Some(Message::Bind {
                portal,
                statement,
                parameters: parameters(&mut body),
            })
        }
        b'E' => Some(Message::Execute {
            portal: body.string().to_vec(),
        }),
        _ => None,
    }
}

/// A Bind's parameters after its names: the format codes (none: all text;
/// one: for all), then each value, as far as the body goes.
fn parameters(body: &mut Body<'_>) -> Vec<Parameter> {
    let mut formats = Vec::new();
    let format_count = body.int16().unwrap_or(0).max(0);
    for _ in 0..format_count {
        match body.int16() {
            Some(format) => formats.push(format == 1),
            None => return Vec::new(),
        }
    }
    let count = body.int16().unwrap_or(0).max(0) as usize;
    let mut parameters = Vec::new();
    for index in 0..count {
        let binary = match formats.as_slice() {
            [] => false,
            [all] => *all,
            each => each.get(index).copied().unwrap_or(false),
        };
        let Some(length) = body.int32() else { break };
        let value = match usize::try_from(length) {
            Ok(length) => match body.take(length) {
                Some(value) => Some(value.to_vec()),
                // Cut short: what there is.
                None => Some(std::mem::take(&mut body.0).to_vec()),
            },
            Err(_) => None,
        };
        parameters.push(Parameter { binary, value });
    }
    parameters
}

/// An ErrorResponse's SQLSTATE (field C) and message (M, with D's detail).
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut body = Body(body);
    let (mut sqlstate, mut message, mut detail) = (String::new(), String::new(), String::new());
    while let Some(&[field]) = body.take(1) {
        if field == 0 {
            break;
        }
        let value = String::from_utf8_lossy(body.string()).into_owned();
        match field {
            b'C' => sqlstate = value,
            b'M' => message = value,
            b'D' => detail = value,
            _ => {}
        }
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    (sqlstate, message)
}

/// Parameters as a line: `$1 = '42', $2 = NULL, $3 = 0x0102`.
pub fn describe_parameters(parameters: &[Parameter]) -> String {
    let shown: Vec<String> = parameters
        .iter()
        .enumerate()
        .map(|(index, parameter)| {
            let value = match &parameter.value {
                None => "NULL".to_string(),
                Some(bytes) if !parameter.binary && std::str::from_utf8(bytes).is_ok() => {
                    format!("'{}'", String::from_utf8_lossy(bytes).replace('\'', "''"))
                }
                Some(bytes) => format!("0x{}", hex::encode(bytes)),
            };
            format!("${} = {value}", index + 1)
        })
        .collect();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(formats: &[i16], values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = b"portal\0stmt\0".to_vec();
        body.extend((formats.len() as i16).to_be_bytes());
        formats.iter().for_each(|f| body.extend(f.to_be_bytes()));
        body.extend((values.len() as i16).to_be_bytes());
        for value in values {
            match value {
                Some(bytes) => {
                    body.extend((bytes.len() as i32).to_be_bytes());
                    body.extend(*bytes);
                }
                None => body.extend((-1i32).to_be_bytes()),
            }
        }
        body.extend(0i16.to_be_bytes());
        body
    }

    #[test]
    fn each_message_is_read_as_laid_out() {
        assert_eq!(
            parse(b'Q', b"SELECT 1\0"),
            Some(Message::Query {
                text: b"SELECT 1".to_vec()
            })
        );
        assert_eq!(
            parse(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"),
            Some(Message::Parse {
                statement: b"s1".to_vec(),
                text: b"SELECT $1".to_vec()
            })
        );
        let Some(Message::Bind {
            portal,
            statement,
            parameters,
        }) = parse(b'B', &bind(&[0, 1], &[Some(b"42"), Some(&[1, 2]), None]))
        else {
            panic!("not a bind");
        };
        assert_eq!((&portal[..], &statement[..]), (&b"portal"[..], &b"stmt"[..]));
        assert_eq!(describe_parameters(&parameters), "$1 = '42', $2 = 0x0102, $3 = NULL");
        assert_eq!(
            parse(b'E', b"portal\0\0\0\0\0"),
            Some(Message::Execute {
                portal: b"portal".to_vec()
            })
        );
        assert_eq!(parse(b'S', b""), None);
    }

    #[test]
    fn bodies_cut_short_or_lying_give_what_they_have() {
        let whole = bind(&[], &[Some(b"abcdef")]);
        for end in 0..whole.len() {
            let _ = parse(b'B', &whole[..end]);
        }
        let Some(Message::Bind { parameters, .. }) = parse(b'B', &whole[..whole.len() - 5]) else {
            panic!("not a bind");
        };
        assert_eq!(parameters[0].value.as_deref(), Some(&b"abc"[..]));
        // A count far past the body, and negative counts.
        assert!(matches!(parse(b'B', b"\0\0\x7f\xff\0\x01"), Some(Message::Bind { .. })));
        assert!(
            matches!(parse(b'B', b"\0\0\xff\xff\xff\xff"), Some(Message::Bind { parameters, .. }) if parameters.is_empty())
        );
    }

    #[test]
    fn error_responses_give_their_sqlstate_and_message() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0\0";
        assert_eq!(
            error_fields(body),
            ("42P01".to_string(), "relation \"nope\" does not exist".to_string())
        );
        assert_eq!(error_fields(b"C4"), ("4".to_string(), String::new()));
    }
}
