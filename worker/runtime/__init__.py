"""What keeps a long-running process well-behaved, whatever it screens: retries and waits
(``retry``), signals (``signals``), the lease and heartbeat (``lease``), systemd's notify
socket (``sdnotify``), the fault boundary around each file (``boundary``) and the chaos
harness's crash points (``faults``)."""
