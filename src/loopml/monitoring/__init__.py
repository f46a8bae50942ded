"""loopml.monitoring"""
