"""One module per daemon: C{Options} and C{makeService}, loaded lazily by the twistd dropin."""
