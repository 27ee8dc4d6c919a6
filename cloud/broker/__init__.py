"""The MQTT broker the hub runs beside: Mosquitto's config, ACL and reloads (``mosquitto``), and the certificate authority that names every client (``pki``)."""
