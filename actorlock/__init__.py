"""actorlock: a lease-based lock coordinator for virtual-machine hosts.

Two ways in: the idiomatic ``async with open_host(config) as host`` and the
libvirt lock-manager API (``plugin_load``, ``new_manager``, ...).
"""

from .actors.host import HostStatus as HostStatus
from .actors.messages import DomainStatus as DomainStatus
from .api import Domain as Domain
from .api import Host as Host
from .api import open_host as open_host
from .config import Config as Config
from .config import load_config as load_config
from .constants import AcquireFlags as AcquireFlags
from .constants import FailureAction as FailureAction
from .constants import MigrateFlags as MigrateFlags
from .constants import NewFlags as NewFlags
from .constants import ObjectType as ObjectType
from .constants import ResourceFlags as ResourceFlags
from .constants import ResourceType as ResourceType
from .errors import ActorlockError as ActorlockError
from .lockmanager import LockManager as LockManager
from .lockmanager import LockManagerPlugin as LockManagerPlugin
from .lockmanager import plugin_load as plugin_load
from .lockmanager import run_plugin as run_plugin
from .model import DomainIdentity as DomainIdentity
from .model import Lease as Lease
from .model import LeaseMode as LeaseMode
from .model import LockState as LockState
from .model import Resource as Resource
from .model import disk as disk

__all__ = [
    "AcquireFlags",
    "ActorlockError",
    "Config",
    "Domain",
    "DomainIdentity",
    "DomainStatus",
    "FailureAction",
    "Host",
    "HostStatus",
    "Lease",
    "LeaseMode",
    "LockManager",
    "LockManagerPlugin",
    "LockState",
    "MigrateFlags",
    "NewFlags",
    "ObjectType",
    "Resource",
    "ResourceFlags",
    "ResourceType",
    "disk",
    "load_config",
    "open_host",
    "plugin_load",
    "run_plugin",
]

__version__ = "0.1.0"
