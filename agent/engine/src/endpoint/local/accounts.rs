//! The names of the users and groups ACLs name, as this machine gives them.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::beneath;
use crate::meta::Named;

thread_local! {
    /// The names of the users and groups ACLs name, looked up once per scan: only a scan's
    /// own thread keeps them (see [`beneath::on_scan_thread`]), and they go with it.
    static ACCOUNT_NAMES: RefCell<HashMap<(Named, u32), Option<String>>> =
        RefCell::new(HashMap::new());
}

/// The name this machine gives a user or group an ACL names, if it gives one.
pub(super) fn account_name(named: Named, id: u32) -> Option<String> {
    let look_up = || match named {
        Named::User => nix::unistd::User::from_uid(id.into())
            .ok()
            .flatten()
            .map(|u| u.name),
        Named::Group => nix::unistd::Group::from_gid(id.into())
            .ok()
            .flatten()
            .map(|g| g.name),
    };
    if !beneath::on_scan_thread() {
        return look_up();
    }
    ACCOUNT_NAMES.with_borrow_mut(|names| names.entry((named, id)).or_insert_with(look_up).clone())
}
