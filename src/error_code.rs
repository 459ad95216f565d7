//! The stable error codes of cdp's HTTP APIs (the profile and cohort API, the collector), each
//! API's declared from one table with its HTTP status, so the list the OpenAPI document is
//! checked against cannot miss one.

/// Declares an enum of error codes from rows `Variant = "code", STATUS;`, with `as_str` (the
/// error body's `code`), `status` and, in tests, `ALL`.
macro_rules! error_codes {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($variant:ident = $code:literal, $status:ident;)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($variant,)*
        }

        impl $name {
            #[cfg(test)]
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $code,)*
                }
            }

            pub fn status(self) -> ::axum::http::StatusCode {
                match self {
                    $($name::$variant => ::axum::http::StatusCode::$status,)*
                }
            }
        }
    };
}

pub(crate) use error_codes;
