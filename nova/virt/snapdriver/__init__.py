# Shim so that nova.conf can say "compute_driver =
# snapdriver.LibvirtSnapshotDriver": Nova imports nova.virt.<compute_driver>.
from snapdriver.driver import LibvirtSnapshotDriver  # noqa: F401
