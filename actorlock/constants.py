"""The seed API's enumerations, named as libvirt's lock manager names them."""

from __future__ import annotations

import enum


class ObjectType(enum.Enum):
    """What a lock manager instance protects (libvirt: VIR_LOCK_MANAGER_OBJECT_TYPE_*)."""

    DOMAIN = "domain"


class NewFlags(enum.IntFlag):
    """Flags for ``new_manager`` (VIR_LOCK_MANAGER_NEW_*)."""

    NONE = 0
    ATTACH = 1 << 0  # re-attach to a guest that kept running across a restart
    MIGRATE = 1 << 1  # the incoming side of a migration


class ResourceType(enum.Enum):
    """Kinds of resource a guest registers (VIR_LOCK_MANAGER_RESOURCE_TYPE_*)."""

    DISK = "disk"
    LEASE = "lease"


class ResourceFlags(enum.IntFlag):
    """Resource flags (VIR_LOCK_MANAGER_RESOURCE_*)."""

    NONE = 0
    READONLY = 1 << 0  # never locked
    SHARED = 1 << 1  # shared lease: any number of shared holders


class AcquireFlags(enum.IntFlag):
    """Flags for ``acquire_object`` (VIR_LOCK_MANAGER_ACQUIRE_*)."""

    NONE = 0
    REGISTER_ONLY = 1 << 0  # bind the guest, take no lease (guest starts paused)
    RESTRICT = 1 << 1  # accepted for compatibility; nothing to restrict in-process


class MigrateFlags(enum.IntFlag):
    """Flags for ``complete_migrate_in`` (VIR_LOCK_MANAGER_MIGRATE_*)."""

    NONE = 0
    CANCEL = 1 << 0


class FailureAction(enum.Enum):
    """What runs when a running guest's leases are lost."""

    POWEROFF = "poweroff"  # kill the guest process
    PAUSE = "pause"  # call the configured async callback
    IGNORE = "ignore"  # log only
