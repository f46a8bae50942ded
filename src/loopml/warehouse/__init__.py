"""loopml.warehouse"""
