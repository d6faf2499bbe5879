"""dmsctl: the admin command line, a client of the control API."""
