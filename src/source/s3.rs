//! S3 and S3-compatible stores (placeholder replaced by the S3 backend).
