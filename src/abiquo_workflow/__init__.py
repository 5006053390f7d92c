"""abiquo-workflow: human approval in front of Abiquo's held deploys, undeploys and reconfigures."""

__version__ = "0.4.0"
