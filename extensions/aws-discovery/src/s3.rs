//! The few S3 calls the discovery makes, as SigV4-presigned URLs (rusty-s3) sent through the
//! broker's `http` interface.

use std::time::Duration;

use apiary_extension_sdk::http::{Request, Response};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use url::Url;

use crate::settings::Settings;

/// How long a signed URL is valid: far longer than a call may take, short enough to be useless
/// if a log ever showed one.
const SIGNED_FOR: Duration = Duration::from_secs(300);
/// ListObjectsV2 pages (of up to 1000 keys) read at most per listing.
const MAX_PAGES: usize = 100;

/// An object seen in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    /// The entity tag, if the store sent one: a changed object has a new one.
    pub etag: Option<String>,
}

/// The bucket of the configuration, with the credentials to sign for it.
pub struct Client {
    bucket: Bucket,
    credentials: Credentials,
}

impl Client {
    pub fn new(settings: &Settings, credentials: Credentials) -> Result<Client, String> {
        let endpoint = settings.endpoint_url();
        let url: Url = endpoint
            .parse()
            .map_err(|e| format!("s3-endpoint: {endpoint:?} is not a URL: {e}"))?;
        let host = url.host_str().ok_or(format!("s3-endpoint: {endpoint:?} has no host"))?;
        let style = if settings.path_style(host) {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            url.clone(),
            style,
            settings.bucket_name.clone(),
            settings.signing_region().to_owned(),
        )
        .map_err(|e| format!("bucket {:?} at {endpoint}: {e}", settings.bucket_name))?;
        Ok(Client { bucket, credentials })
    }

    /// HeadBucket: whether the bucket exists and these credentials may use it.
    pub fn check_bucket(&self) -> Result<(), String> {
        let name = self.bucket.name();
        let response = request(
            "HEAD",
            self.bucket.head_bucket(Some(&self.credentials)).sign(SIGNED_FOR),
            None,
        )?;
        match response.status {
            200..=299 => Ok(()),
            404 => Err(format!("the bucket {name:?} does not exist")),
            401 | 403 => Err(format!(
                "no permission for the bucket {name:?} (HTTP {}): check the credentials and the bucket's policy",
                response.status
            )),
            status => Err(format!(
                "checking the bucket {name:?} failed with HTTP {status}{}: check s3-bucket-region and s3-endpoint",
                detail(&response)
            )),
        }
    }

    /// PutObject of a text.
    pub fn put(&self, key: &str, content: &str) -> Result<(), String> {
        check_key(key)?;
        let url = self.bucket.put_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let response = request("PUT", url, Some(content.as_bytes().to_vec()))?;
        expect_success(&response, "writing", key)
    }

    /// GetObject: the content.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        check_key(key)?;
        let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let response = request("GET", url, None)?;
        expect_success(&response, "reading", key)?;
        Ok(response.body)
    }

    /// DeleteObject; an object already gone is no error.
    pub fn delete(&self, key: &str) -> Result<(), String> {
        check_key(key)?;
        let url = self.bucket.delete_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let response = request("DELETE", url, None)?;
        if response.status == 404 {
            return Ok(());
        }
        expect_success(&response, "deleting", key)
    }

    /// ListObjectsV2 of every key starting with `prefix`, following continuation tokens.
    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>, String> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            if !prefix.is_empty() {
                action.with_prefix(prefix);
            }
            if let Some(token) = &token {
                action.with_continuation_token(token.as_str());
            }
            let response = request("GET", action.sign(SIGNED_FOR), None)?;
            expect_success(&response, "listing", prefix)?;
            let text = String::from_utf8_lossy(&response.body);
            let page = ListObjectsV2::parse_response(&text)
                .map_err(|e| format!("listing {prefix:?}: the answer is no ListBucketResult: {e}"))?;
            objects.extend(page.contents.into_iter().map(|c| Listed {
                key: c.key,
                etag: c.etag,
            }));
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => return Ok(objects),
            }
        }
        Err(format!("listing {prefix:?}: more than {MAX_PAGES} pages of objects"))
    }
}

/// Credentials for signing.
pub fn credentials(key: &str, secret: &str, token: Option<&str>) -> Credentials {
    match token {
        Some(token) => Credentials::new_with_token(key, secret, token),
        None => Credentials::new(key, secret),
    }
}

/// Refuses keys a URL cannot carry as they are (rusty-s3's warning): an empty key would address
/// the bucket, and `.`/`..` segments would be resolved away, possibly into another bucket.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(format!("the object key {key:?} cannot be used in a URL"));
    }
    Ok(())
}

/// Sends one request; the error names the method and the URL without its signature.
fn request(method: &str, url: Url, body: Option<Vec<u8>>) -> Result<Response, String> {
    let mut shown = url.clone();
    shown.set_query(None);
    let mut request = Request::new(method, url.as_str());
    if let Some(body) = body {
        request = request.header("content-type", "text/plain; charset=UTF-8").body(body);
    }
    request.send().map_err(|e| format!("{method} {shown}: {e}"))
}

fn expect_success(response: &Response, what: &str, key: &str) -> Result<(), String> {
    if response.is_success() {
        return Ok(());
    }
    Err(format!(
        "{what} {key:?} failed with HTTP {}{}",
        response.status,
        detail(response)
    ))
}

/// `: Code: Message` from an S3 error document, if the answer is one.
fn detail(response: &Response) -> String {
    let text = String::from_utf8_lossy(&response.body);
    let element = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].chars().take(300).collect::<String>())
    };
    match (element("Code"), element("Message")) {
        (Some(code), Some(message)) => format!(": {code}: {message}"),
        (Some(code), None) => format!(": {code}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{CredentialsType, Settings};

    fn settings(endpoint: &str, path_style: Option<bool>) -> Settings {
        Settings {
            bucket_name: "examplebucket".into(),
            bucket_region: "us-east-1".into(),
            file_prefix: "hivemq/cluster/nodes/".into(),
            file_expiration: 360,
            update_interval: 180,
            endpoint: endpoint.into(),
            endpoint_region: None,
            path_style_access: path_style,
            credentials: CredentialsType::Default,
        }
    }

    /// The keys of AWS's SigV4 documentation examples.
    fn aws_example_credentials() -> Credentials {
        credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None)
    }

    fn at(time: &str) -> jiff::Timestamp {
        time.parse().unwrap()
    }

    /// AWS's published example of a presigned URL ("Authenticating Requests: Using Query
    /// Parameters", GET examplebucket/test.txt on 2013-05-24, valid 86400 s): the signature
    /// must be the one AWS computed.
    #[test]
    fn presigned_get_matches_aws_published_example() {
        let s = settings("https://s3.amazonaws.com", Some(false));
        let client = Client::new(&s, aws_example_credentials()).unwrap();
        let url = client
            .bucket
            .get_object(Some(&client.credentials), "test.txt")
            .sign_with_time(Duration::from_secs(86400), &at("2013-05-24T00:00:00Z"));
        assert_eq!(
            url.as_str(),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn urls_by_style() {
        let aws = settings("s3.amazonaws.com", None);
        let client = Client::new(&aws, aws_example_credentials()).unwrap();
        assert_eq!(
            client.bucket.object_url("hivemq/cluster/nodes/ABC").as_str(),
            "https://examplebucket.s3.us-east-1.amazonaws.com/hivemq/cluster/nodes/ABC"
        );
        let local = settings("http://127.0.0.1:9000", None);
        let client = Client::new(&local, aws_example_credentials()).unwrap();
        assert_eq!(
            client.bucket.object_url("p/ABC").as_str(),
            "http://127.0.0.1:9000/examplebucket/p/ABC"
        );
    }

    #[test]
    fn keys_that_urls_would_change_are_refused() {
        assert!(check_key("hivemq/cluster/nodes/ABC").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("../other/x").is_err());
        assert!(check_key("a/./b").is_err());
    }

    #[test]
    fn s3_error_details() {
        let response = Response {
            status: 403,
            headers: Vec::new(),
            body: b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request \
                    signature we calculated does not match</Message></Error>"
                .to_vec(),
        };
        assert_eq!(
            expect_success(&response, "writing", "k").unwrap_err(),
            "writing \"k\" failed with HTTP 403: SignatureDoesNotMatch: The request signature we calculated \
             does not match"
        );
    }
}
