//! The one place that touches libpq. Everything else sees owned Rust values.
//!
//! libpq is used as is so that users keep PG* environment variables, `~/.pgpass`, service files, sslmode
//! and every authentication method: we only pass the settings the user gave on our command line.

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

use pq_sys as ffi;

#[derive(Debug, thiserror::Error)]
pub struct PgError {
    pub message: String,
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl PgError {
    fn new(message: impl Into<String>) -> Self {
        PgError { message: one_line(&message.into()) }
    }
}

/// libpq messages end in newlines and may carry DETAIL/HINT lines; our errors are one line each. A line said
/// twice is kept once: under sslmode=prefer (libpq's default) a server that refuses the login over TLS is asked
/// again without it (fe-connect.c), and libpq reports both refusals, word for word the same.
fn one_line(s: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for l in s.trim().lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !lines.contains(&l) {
            lines.push(l);
        }
    }
    lines.join("; ")
}

/// One libpq connection. libpq connections may move between threads but never be used by two at once,
/// which `&mut self` on every operation that talks to the server enforces.
pub struct Conn {
    raw: NonNull<ffi::PGconn>,
}

// SAFETY: libpq is built thread-safe (PQisthreadsafe) and a PGconn is only used through &mut or owned access.
unsafe impl Send for Conn {}

/// What `get_copy_data` found on a CopyBoth stream.
pub enum CopyData {
    Message(Vec<u8>),
    /// Nothing buffered yet: wait for the socket to become readable.
    WouldBlock,
    /// The server ended the copy; the command's final result follows.
    Done,
}

/// How a connection's bytes travel, as far as someone on the path is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// TLS (what sslmode=prefer, libpq's default, gets from a server with ssl = on) or GSSAPI encryption.
    Encrypted,
    /// A Unix-domain socket: the bytes never leave this host.
    UnixSocket,
    /// TCP in clear text: under sslmode=prefer (libpq's default) a server with ssl = off, or whose pg_hba.conf
    /// admits us only by a `hostnossl` line (libpq then retries without TLS, fe-connect.c); or sslmode=allow or
    /// disable.
    Clear,
}

/// The rows of one query result, as text, with SQL NULL as `None`.
pub struct Rows {
    rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    pub fn get(&self, row: usize, col: usize) -> Option<&str> {
        self.rows.get(row)?.get(col)?.as_deref()
    }

    /// Each row's fields.
    pub fn iter(&self) -> impl Iterator<Item = &[Option<String>]> {
        self.rows.iter().map(Vec::as_slice)
    }
}

/// The settings a connection string or URI gives (-d), as libpq's own parser reads it (PQconninfoParse):
/// keyword and value of each one set.
pub fn parse_conninfo(conninfo: &str) -> Result<Vec<(String, String)>, PgError> {
    let c = cstring(conninfo)?;
    let mut err: *mut CChar = std::ptr::null_mut();
    // SAFETY: c is NUL-terminated; err receives a libpq-allocated message or stays NULL.
    let options = unsafe { ffi::PQconninfoParse(c.as_ptr(), &mut err) };
    if options.is_null() {
        let message = if err.is_null() {
            "out of memory".to_string()
        } else {
            // SAFETY: a NUL-terminated message from libpq, freed right after.
            let m = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
            unsafe { ffi::PQfreemem(err.cast()) };
            m
        };
        return Err(PgError::new(message));
    }
    let mut set = Vec::new();
    // SAFETY: an array terminated by an entry whose keyword is NULL, valid until PQconninfoFree.
    unsafe {
        let mut o = options;
        while !(*o).keyword.is_null() {
            if !(*o).val.is_null() {
                let key = CStr::from_ptr((*o).keyword).to_string_lossy().into_owned();
                set.push((key, CStr::from_ptr((*o).val).to_string_lossy().into_owned()));
            }
            o = o.add(1);
        }
        ffi::PQconninfoFree(options);
    }
    Ok(set)
}

impl Conn {
    /// Connects with the given keywords; anything not given comes from libpq's own defaults
    /// (PG* environment, service file, .pgpass).
    pub fn connect(params: &[(&str, &str)]) -> Result<Conn, PgError> {
        let owned: Vec<(CString, CString)> =
            params.iter().map(|(k, v)| Ok((cstring(k)?, cstring(v)?))).collect::<Result<_, PgError>>()?;
        let mut keys: Vec<*const CChar> = owned.iter().map(|(k, _)| k.as_ptr()).collect();
        let mut values: Vec<*const CChar> = owned.iter().map(|(_, v)| v.as_ptr()).collect();
        keys.push(std::ptr::null());
        values.push(std::ptr::null());
        // SAFETY: both arrays are NULL-terminated and outlive the call. expand_dbname: a `dbname` that is a
        // connection string or URI (-d) is expanded by libpq, its settings in its place (libpq.sgml,
        // PQconnectdbParams): later keywords win over it.
        let raw = unsafe { ffi::PQconnectdbParams(keys.as_ptr(), values.as_ptr(), 1) };
        let raw = NonNull::new(raw).ok_or_else(|| PgError::new("libpq could not allocate a connection"))?;
        let conn = Conn { raw };
        // SAFETY: raw is a valid connection object.
        if unsafe { ffi::PQstatus(conn.raw.as_ptr()) } != ffi::ConnStatusType::CONNECTION_OK {
            return Err(PgError::new(conn.error_message()));
        }
        Ok(conn)
    }

    fn error_message(&self) -> String {
        // SAFETY: PQerrorMessage returns a string owned by the connection, valid until the next call.
        unsafe { text(ffi::PQerrorMessage(self.raw.as_ptr())) }.unwrap_or_default()
    }

    pub fn server_version(&self) -> i32 {
        // SAFETY: valid connection.
        unsafe { ffi::PQserverVersion(self.raw.as_ptr()) }
    }

    pub fn host(&self) -> String {
        self.option("host").unwrap_or_default()
    }

    pub fn user(&self) -> String {
        self.option("user").unwrap_or_default()
    }

    /// The value libpq actually used for a connection option (PQconninfo), whatever its source: flag,
    /// environment, service file or default. None when unset.
    pub fn option(&self, keyword: &str) -> Option<String> {
        // SAFETY: PQconninfo returns an array terminated by a NULL keyword, owned by us until PQconninfoFree.
        unsafe {
            let opts = ffi::PQconninfo(self.raw.as_ptr());
            if opts.is_null() {
                return None;
            }
            let mut found = None;
            let mut o = opts;
            while !(*o).keyword.is_null() {
                if text((*o).keyword).as_deref() == Some(keyword) {
                    found = text((*o).val).filter(|v| !v.is_empty());
                    break;
                }
                o = o.add(1);
            }
            ffi::PQconninfoFree(opts);
            found
        }
    }

    /// How this connection travels. libpq says whether it encrypts (PQsslInUse, PQgssEncInUse); the kernel
    /// says whether its socket is a Unix-domain one (getsockname), whatever host string libpq was given.
    pub fn wire(&self) -> Wire {
        // SAFETY: valid connection.
        let encrypted =
            unsafe { ffi::PQsslInUse(self.raw.as_ptr()) == 1 || ffi::PQgssEncInUse(self.raw.as_ptr()) == 1 };
        if encrypted {
            return Wire::Encrypted;
        }
        // SAFETY: valid connection.
        let fd: RawFd = unsafe { ffi::PQsocket(self.raw.as_ptr()) };
        // SAFETY: libpq keeps the socket open while the connection lives, which outlasts this call.
        let local = (fd >= 0).then(|| rustix::net::getsockname(unsafe { BorrowedFd::borrow_raw(fd) }));
        match local {
            Some(Ok(addr)) if addr.address_family() == rustix::net::AddressFamily::UNIX => Wire::UnixSocket,
            _ => Wire::Clear,
        }
    }

    /// Runs a query (simple protocol) and returns its rows; an error result becomes `PgError`.
    pub fn query(&mut self, sql: &str) -> Result<Rows, PgError> {
        let sql = cstring(sql)?;
        // SAFETY: valid connection and NUL-terminated query.
        let res = OwnedResult::new(unsafe { ffi::PQexec(self.raw.as_ptr(), sql.as_ptr()) });
        self.rows(res)
    }

    /// Runs a query with text parameters ($1, $2, ...), so values never need quoting.
    pub fn query_params(&mut self, sql: &str, params: &[&str]) -> Result<Rows, PgError> {
        let sql = cstring(sql)?;
        let owned: Vec<CString> = params.iter().map(|p| cstring(p)).collect::<Result<_, _>>()?;
        let ptrs: Vec<*const CChar> = owned.iter().map(|p| p.as_ptr()).collect();
        // SAFETY: all pointers are valid for the call; NULL types/lengths/formats mean "text, inferred".
        let res = OwnedResult::new(unsafe {
            ffi::PQexecParams(
                self.raw.as_ptr(),
                sql.as_ptr(),
                ptrs.len() as i32,
                std::ptr::null(),
                ptrs.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
            )
        });
        self.rows(res)
    }

    fn rows(&self, res: OwnedResult) -> Result<Rows, PgError> {
        let Some(raw) = res.0 else { return Err(PgError::new(self.error_message())) };
        // SAFETY: raw is a valid result until `res` drops at the end of this function.
        unsafe {
            match ffi::PQresultStatus(raw) {
                ffi::ExecStatusType::PGRES_TUPLES_OK | ffi::ExecStatusType::PGRES_COMMAND_OK => {}
                _ => return Err(res.error(self)),
            }
            let (n, m) = (ffi::PQntuples(raw), ffi::PQnfields(raw));
            let rows = (0..n)
                .map(|r| {
                    (0..m)
                        .map(|c| if ffi::PQgetisnull(raw, r, c) == 1 { None } else { text(ffi::PQgetvalue(raw, r, c)) })
                        .collect()
                })
                .collect();
            Ok(Rows { rows })
        }
    }

    /// Sends a command that enters CopyBoth mode (START_REPLICATION).
    pub fn start_copy_both(&mut self, sql: &str) -> Result<(), PgError> {
        let sql = cstring(sql)?;
        // SAFETY: valid connection and query.
        let res = OwnedResult::new(unsafe { ffi::PQexec(self.raw.as_ptr(), sql.as_ptr()) });
        match res.0 {
            // SAFETY: valid result.
            Some(r) if unsafe { ffi::PQresultStatus(r) } == ffi::ExecStatusType::PGRES_COPY_BOTH => Ok(()),
            Some(_) => Err(res.error(self)),
            None => Err(PgError::new(self.error_message())),
        }
    }

    /// Non-blocking read of the next CopyData message.
    pub fn get_copy_data(&mut self) -> Result<CopyData, PgError> {
        let mut buf: *mut CChar = std::ptr::null_mut();
        // SAFETY: valid connection; on success libpq hands us a buffer we free with PQfreemem.
        let n = unsafe { ffi::PQgetCopyData(self.raw.as_ptr(), &mut buf, 1) };
        match n {
            0 => Ok(CopyData::WouldBlock),
            -1 => Ok(CopyData::Done),
            -2 => Err(PgError::new(self.error_message())),
            n => {
                // SAFETY: libpq returned n bytes at buf.
                let data = unsafe { std::slice::from_raw_parts(buf as *const u8, n as usize) }.to_vec();
                // SAFETY: buf came from libpq.
                unsafe { ffi::PQfreemem(buf.cast()) };
                Ok(CopyData::Message(data))
            }
        }
    }

    /// Reads what arrived on the socket into libpq's buffer (after poll said it is readable).
    pub fn consume_input(&mut self) -> Result<(), PgError> {
        // SAFETY: valid connection.
        if unsafe { ffi::PQconsumeInput(self.raw.as_ptr()) } == 1 {
            Ok(())
        } else {
            Err(PgError::new(self.error_message()))
        }
    }

    pub fn put_copy_data(&mut self, data: &[u8]) -> Result<(), PgError> {
        // SAFETY: valid connection; data is valid for len bytes.
        let ok = unsafe { ffi::PQputCopyData(self.raw.as_ptr(), data.as_ptr().cast(), data.len() as i32) };
        // SAFETY: valid connection.
        if ok == 1 && unsafe { ffi::PQflush(self.raw.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(PgError::new(self.error_message()))
        }
    }

    /// Ends our side of a CopyBoth stream and collects the server's final results, as the protocol asks
    /// (protocol-replication: the client sends CopyDone and waits for CommandComplete).
    pub fn end_copy(&mut self) -> Result<(), PgError> {
        self.send_copy_done()?;
        // The server may still send CopyData before its own CopyDone: drain it, then read results to the end.
        loop {
            match self.get_copy_data()? {
                CopyData::Message(_) => continue,
                CopyData::WouldBlock => self.wait_readable(Duration::from_secs(30))?,
                CopyData::Done => break,
            }
        }
        self.copy_ended()
    }

    /// Sends our CopyDone (the first half of `end_copy`, for a caller that drains the rest itself).
    pub fn send_copy_done(&mut self) -> Result<(), PgError> {
        // SAFETY: valid connection.
        if unsafe { ffi::PQputCopyEnd(self.raw.as_ptr(), std::ptr::null()) } != 1 {
            return Err(PgError::new(self.error_message()));
        }
        // SAFETY: valid connection.
        unsafe { ffi::PQflush(self.raw.as_ptr()) };
        Ok(())
    }

    /// Reads the results that follow the server's end of a copy stream: its error, when it ended the stream
    /// with one (a WAL segment it has removed, a timeline it does not have).
    pub fn copy_ended(&mut self) -> Result<(), PgError> {
        let mut first_error = None;
        loop {
            // SAFETY: valid connection.
            let res = OwnedResult::new(unsafe { ffi::PQgetResult(self.raw.as_ptr()) });
            let Some(r) = res.0 else { break };
            // SAFETY: valid result.
            let status = unsafe { ffi::PQresultStatus(r) };
            if status == ffi::ExecStatusType::PGRES_FATAL_ERROR && first_error.is_none() {
                first_error = Some(res.error(self));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Checks, without blocking, that an idle session still stands: a session ended by the server
    /// (pg_terminate_backend, shutdown, restart) sends its FATAL message and closes, which only shows
    /// once we read. Returns the reason when it is gone.
    pub fn check_alive(&mut self) -> Result<(), PgError> {
        self.wait_readable(Duration::ZERO)?;
        // SAFETY: valid connection.
        if unsafe { ffi::PQstatus(self.raw.as_ptr()) } != ffi::ConnStatusType::CONNECTION_OK {
            return Err(PgError::new(self.error_message()));
        }
        Ok(())
    }

    /// Waits until the connection's socket is readable (or the timeout passes), then consumes input.
    pub fn wait_readable(&mut self, timeout: Duration) -> Result<(), PgError> {
        self.wait_readable_or(timeout, None)
    }

    /// `wait_readable`, also returning as soon as `wake` is readable (another thread's eventfd: a loop that
    /// waits on the server can then be told something at once, not after `timeout`).
    pub fn wait_readable_or(&mut self, timeout: Duration, wake: Option<BorrowedFd<'_>>) -> Result<(), PgError> {
        // SAFETY: valid connection.
        let fd: RawFd = unsafe { ffi::PQsocket(self.raw.as_ptr()) };
        if fd < 0 {
            return Err(PgError::new("connection to the server has no socket (lost)"));
        }
        // SAFETY: libpq keeps the socket open while the connection lives, which outlasts this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut fds = vec![rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        fds.extend(wake.as_ref().map(|w| rustix::event::PollFd::new(w, rustix::event::PollFlags::IN)));
        let ts =
            rustix::time::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => self.consume_input(),
            Err(e) => Err(PgError::new(format!("poll on the server connection failed: {e}"))),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: we own the connection; closing it ends whatever the server session held for us
        // (a non-exclusive backup, a TEMPORARY slot).
        unsafe { ffi::PQfinish(self.raw.as_ptr()) }
    }
}

type CChar = std::os::raw::c_char;

/// Owns a PGresult so that it is cleared on every path; `None` is libpq's NULL result.
struct OwnedResult(Option<*mut ffi::PGresult>);

impl OwnedResult {
    fn new(raw: *mut ffi::PGresult) -> Self {
        OwnedResult(if raw.is_null() { None } else { Some(raw) })
    }

    fn error(&self, conn: &Conn) -> PgError {
        let Some(r) = self.0 else { return PgError::new(conn.error_message()) };
        // SAFETY: valid result; returned strings are owned by it.
        unsafe {
            let message =
                text(ffi::PQresultErrorMessage(r)).filter(|m| !m.is_empty()).unwrap_or_else(|| conn.error_message());
            PgError { message: one_line(&message) }
        }
    }
}

impl Drop for OwnedResult {
    fn drop(&mut self) {
        if let Some(r) = self.0 {
            // SAFETY: we own the result.
            unsafe { ffi::PQclear(r) }
        }
    }
}

fn cstring(s: &str) -> Result<CString, PgError> {
    CString::new(s).map_err(|_| PgError::new(format!("text contains a NUL byte: {s:?}")))
}

/// Copies a C string libpq owns; NULL becomes None.
unsafe fn text(p: *const CChar) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_message_is_one_line_and_says_each_thing_once() {
        let fatal = "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication \
                     failed for user \"rep\"";
        assert_eq!(one_line(&format!("{fatal}\n{fatal}\n")), fatal, "sslmode=prefer's retry without TLS");
        assert_eq!(
            one_line("ERROR:  relation \"t\" does not exist\nLINE 1: select * from t\n\n"),
            "ERROR:  relation \"t\" does not exist; LINE 1: select * from t"
        );
    }
}
