//! What a memory access is: its kind and the privilege it is made with.

/// The kind of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// The privilege an access is made with (SDM Vol. 3A, 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// A user-mode access: CPL = 3.
    User,
    /// An explicit supervisor-mode access: CPL < 3. SMAP may be overridden by RFLAGS.AC.
    Supervisor,
    /// An implicit supervisor-mode access, whatever the CPL: descriptor tables, the TSS, the
    /// shadow stack of an event delivery. RFLAGS.AC never overrides SMAP for it. An implicit
    /// instruction fetch does not exist; a fetch with this privilege is checked as a supervisor
    /// fetch.
    Implicit,
}

/// A memory access: what it does and with which privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// User, supervisor or implicit supervisor.
    pub privilege: Privilege,
}

impl Access {
    /// An access of `kind` made with `privilege`.
    #[inline]
    pub const fn new(kind: AccessKind, privilege: Privilege) -> Access {
        Access { kind, privilege }
    }

    /// A data read with `privilege`.
    #[inline]
    pub const fn read(privilege: Privilege) -> Access {
        Access::new(AccessKind::Read, privilege)
    }

    /// A data write with `privilege`.
    #[inline]
    pub const fn write(privilege: Privilege) -> Access {
        Access::new(AccessKind::Write, privilege)
    }

    /// An instruction fetch with `privilege`.
    #[inline]
    pub const fn fetch(privilege: Privilege) -> Access {
        Access::new(AccessKind::Fetch, privilege)
    }

    /// Whether the access writes.
    #[inline]
    pub const fn is_write(self) -> bool {
        matches!(self.kind, AccessKind::Write)
    }

    /// Whether the access is an instruction fetch.
    #[inline]
    pub const fn is_fetch(self) -> bool {
        matches!(self.kind, AccessKind::Fetch)
    }

    /// Whether the access is a user-mode access (CPL = 3).
    #[inline]
    pub const fn is_user(self) -> bool {
        matches!(self.privilege, Privilege::User)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_and_predicates() {
        let write = Access::write(Privilege::User);
        assert!(write.is_write() && write.is_user() && !write.is_fetch());
        let fetch = Access::fetch(Privilege::Supervisor);
        assert!(fetch.is_fetch() && !fetch.is_user() && !fetch.is_write());
        let read = Access::read(Privilege::Implicit);
        assert_eq!(read, Access::new(AccessKind::Read, Privilege::Implicit));
        assert!(!read.is_user());
    }
}
