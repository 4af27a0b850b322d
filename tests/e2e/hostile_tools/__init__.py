"""Programs that guest root runs against the host in tests/e2e/test_hostile_guest.py.

They are copied into the guest (install_tools in that test) and run there as
`python3 -m hostile_tools.NAME`, standard library only; each prints one JSON
object, its findings, for the test to judge. None of them is imported by the
host side but for its constants.
"""
